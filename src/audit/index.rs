//! The person index: for every published load and authority, the persons its
//! Parquet files hold, as keyed hashes (see [`super::PersonKey`]). Built
//! after a load publishes and, for anything a crash left out, at the next
//! run; read from the published files in streaming fashion, so memory does not
//! grow with the load.

use std::collections::BTreeSet;

use arrow_array::{Array, StringArray};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::sync::mpsc;

use super::{PersonId, PersonKey};
use crate::config::{Area, Config};
use crate::state::{State, StateError};
use crate::tree::store::{Load, Store};

/// Persons handed to the database at a time.
const CHUNK: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("reading the published tree: {0}")]
    Tree(#[from] std::io::Error),
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error(transparent)]
    State(#[from] StateError),
}

/// Indexes every published load of `areas` that is not indexed yet, and
/// marks indexed loads of those areas that left the tree as removed.
/// Returns the number of (load, authority) folders indexed.
pub async fn index_tree(
    config: &Config,
    areas: &[&Area],
    state: &State,
    key: &PersonKey,
) -> Result<usize, IndexError> {
    let done: BTreeSet<(String, String, String)> =
        state.audit_indexed().await?.into_iter().collect();
    let mut present = BTreeSet::new();
    let mut indexed = 0;
    let store = config.store();
    for area in areas {
        for l in store.loads(&area.id)? {
            let k = (l.authority.to_string(), area.id.clone(), l.id.to_string());
            present.insert(k.clone());
            if done.contains(&k) {
                continue;
            }
            let load_ref = state.audit_index_begin(&k.0, &k.1, &k.2).await?;
            index_load(state, key, load_ref, &store, &l, &area.person_column).await?;
            state.audit_index_complete(load_ref).await?;
            indexed += 1;
        }
    }
    // Only the areas walked are judged; an area removed from the config keeps
    // its index until an operator deals with it.
    let areas: BTreeSet<&str> = areas.iter().map(|a| a.id.as_str()).collect();
    let gone: Vec<_> = done
        .into_iter()
        .filter(|k| areas.contains(k.1.as_str()) && !present.contains(k))
        .collect();
    state.audit_index_removed(&gone).await?;
    Ok(indexed)
}

/// Streams the person column of every Parquet file of a load into the index.
async fn index_load(
    state: &State,
    key: &PersonKey,
    load_ref: i64,
    store: &Store,
    load: &Load,
    column: &str,
) -> Result<(), IndexError> {
    for name in store.files(load)? {
        if !name.ends_with(".parquet") {
            continue;
        }
        let what = format!("{load}/{name}");
        let file = store.open(load, &name)?;
        let (tx, mut rx) = mpsc::channel::<Vec<PersonId>>(2);
        let reader = {
            let (what, column, key) = (what.clone(), column.to_string(), key.clone());
            tokio::task::spawn_blocking(move || read_persons(file, &what, &column, &key, tx))
        };
        while let Some(chunk) = rx.recv().await {
            state.audit_index_persons(load_ref, &chunk).await?;
        }
        reader.await.map_err(|e| IndexError::File {
            file: what,
            message: e.to_string(),
        })??;
    }
    Ok(())
}

fn read_persons(
    file: std::fs::File,
    what: &str,
    column: &str,
    key: &PersonKey,
    tx: mpsc::Sender<Vec<PersonId>>,
) -> Result<(), IndexError> {
    let err = |message: String| IndexError::File {
        file: what.to_string(),
        message,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| err(e.to_string()))?;
    let Some(index) = builder
        .schema()
        .fields()
        .iter()
        .position(|f| f.name() == column)
    else {
        return Err(err(format!("has no person column \"{column}\"")));
    };
    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(CHUNK)
        .build()
        .map_err(|e| err(e.to_string()))?;
    for batch in reader {
        let batch = batch.map_err(|e| err(e.to_string()))?;
        let col = batch.column(0);
        let Some(values) = col.as_any().downcast_ref::<StringArray>() else {
            return Err(err(format!(
                "person column \"{column}\" is {}, not text",
                col.data_type()
            )));
        };
        let chunk: Vec<PersonId> = values.iter().flatten().map(|cpr| key.person(cpr)).collect();
        if tx.blocking_send(chunk).is_err() {
            break;
        }
    }
    Ok(())
}

//! `udstil ledger`: the delivery ledger, gathered from the audit trail's
//! complete downloads and the published tree (the rules are in `ledger`).

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;

use super::{AppError, required_state};
use crate::authority::AuthorityId;
use crate::config::Config;
use crate::ledger::{self, Entry, Published};
use crate::state::State;
use crate::tree::Store;

/// Which rows of the ledger to build; `None` is all.
#[derive(Debug, Clone, Default)]
pub struct LedgerFilter {
    pub supplier: Option<String>,
    pub authority: Option<AuthorityId>,
    pub area: Option<String>,
}

/// The ledger rows matching `filter`: every supplier x authority x area the
/// supplier may read now, or has fetched from before.
pub async fn ledger(config: &Config, filter: &LedgerFilter) -> Result<Vec<Entry>, AppError> {
    let state = required_state(config).await?;
    let entries = ledger_on(config, &state, filter).await;
    state.close().await;
    entries
}

/// As [`ledger`], on an open state database (the daemon's).
pub async fn ledger_on(
    config: &Config,
    state: &State,
    filter: &LedgerFilter,
) -> Result<Vec<Entry>, AppError> {
    if let Some(s) = &filter.supplier
        && !config.suppliers.contains_key(s)
    {
        return Err(AppError::Unknown(
            crate::config::report::UnknownName::Supplier(s.clone()),
        ));
    }
    let authority = filter.authority.map(|a| a.to_string());
    let downloads = state
        .complete_downloads(filter.supplier.as_deref(), authority.as_deref())
        .await?;
    let fetched = ledger::group(downloads);
    let now = Utc::now();
    let mut pairs: BTreeSet<(String, AuthorityId, String)> = BTreeSet::new();
    for supplier in config.suppliers.keys() {
        if filter.supplier.as_ref().is_some_and(|s| s != supplier) {
            continue;
        }
        for (a, areas) in config.agreements.visible(supplier, now) {
            for area in areas {
                pairs.insert((supplier.clone(), a, area));
            }
        }
    }
    for (supplier, a, area) in fetched.keys() {
        if let Ok(a) = a.parse::<AuthorityId>() {
            pairs.insert((supplier.clone(), a, area.clone()));
        }
    }
    pairs.retain(|(_, a, area)| {
        filter.authority.is_none_or(|f| f == *a) && filter.area.as_ref().is_none_or(|f| f == area)
    });
    let store = config.store();
    let mut published: BTreeMap<(AuthorityId, String), Vec<Published>> = BTreeMap::new();
    let empty = BTreeSet::new();
    let mut out = Vec::with_capacity(pairs.len());
    for (supplier, a, area) in pairs {
        let loads = match published.entry((a, area.clone())) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => v.insert(
                published_of(&store, a, &area).map_err(|source| AppError::Io {
                    what: format!("reading the published loads of {a} {area}"),
                    source,
                })?,
            ),
        };
        let got = fetched
            .get(&(supplier.clone(), a.to_string(), area.clone()))
            .unwrap_or(&empty);
        out.push(ledger::entry(&supplier, a, &area, loads, got));
    }
    Ok(out)
}

/// An authority's published loads of an area, all versions, with the files
/// their manifests list.
fn published_of(store: &Store, a: AuthorityId, area: &str) -> std::io::Result<Vec<Published>> {
    let mut out = Vec::new();
    for version in store.versions(a, area)? {
        for load in store.loads_of(a, area, version)? {
            let manifest = crate::load::read_manifest(store, &load)?;
            out.push(Published {
                id: load.id,
                kind: load.kind,
                version,
                files: manifest.files.into_iter().map(|f| f.name).collect(),
            });
        }
    }
    Ok(out)
}

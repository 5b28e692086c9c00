//! Retention, pure planning: which loads of one authority's area to remove.
//!
//! Keep the newest `keep_full` full loads (of any version) and every load
//! newer than the oldest kept full, so a client can always rebuild its replica
//! from a kept full and the deltas after it. Everything older goes, including
//! an old version once the newer one has `keep_full` full loads.

use crate::tree::{LoadId, LoadKind};

/// One published load of an authority's area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub id: LoadId,
    pub kind: LoadKind,
    pub version: u32,
}

/// The loads to remove, oldest first.
pub fn to_remove(loads: &[Published], keep_full: u32) -> Vec<Published> {
    let mut sorted = loads.to_vec();
    sorted.sort_by_key(|l| l.id);
    let fulls: Vec<&Published> = sorted.iter().filter(|l| l.kind == LoadKind::Full).collect();
    if keep_full == 0 || fulls.len() <= keep_full as usize {
        // Too few fulls to drop any; deltas before the oldest full are useless
        // only once a full exists after them, which the rule below handles.
        return match fulls.first() {
            Some(oldest) => sorted
                .iter()
                .filter(|l| l.id < oldest.id)
                .copied()
                .collect(),
            None => Vec::new(),
        };
    }
    let oldest_kept = fulls[fulls.len() - keep_full as usize].id;
    sorted.into_iter().filter(|l| l.id < oldest_kept).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn l(seq: u64, kind: LoadKind, version: u32) -> Published {
        Published {
            id: LoadId {
                seq,
                at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
                    + chrono::Duration::hours(seq as i64),
            },
            kind,
            version,
        }
    }

    use LoadKind::{Delta as D, Full as F};

    fn seqs(v: Vec<Published>) -> Vec<u64> {
        v.into_iter().map(|p| p.id.seq).collect()
    }

    #[test]
    fn keeps_the_last_fulls_and_every_delta_after_the_oldest_kept() {
        let loads = [
            l(1, F, 1),
            l(2, D, 1),
            l(3, F, 1),
            l(4, D, 1),
            l(5, F, 1),
            l(6, D, 1),
            l(7, D, 1),
        ];
        assert_eq!(seqs(to_remove(&loads, 2)), [1, 2]);
        assert_eq!(seqs(to_remove(&loads, 1)), [1, 2, 3, 4]);
        assert_eq!(seqs(to_remove(&loads, 3)), Vec::<u64>::new());
        assert_eq!(seqs(to_remove(&loads, 9)), Vec::<u64>::new());
    }

    #[test]
    fn an_old_version_goes_once_the_new_one_has_enough_fulls() {
        let loads = [l(1, F, 1), l(2, D, 1), l(3, F, 2), l(4, D, 2)];
        assert_eq!(seqs(to_remove(&loads, 2)), Vec::<u64>::new());
        assert_eq!(seqs(to_remove(&loads, 1)), [1, 2]);
    }

    #[test]
    fn deltas_before_the_first_full_are_removed_and_no_full_means_nothing_removed() {
        // An authority whose first rows came in a delta, later given a full.
        let loads = [l(1, D, 1), l(2, D, 1), l(3, F, 1), l(4, D, 1)];
        assert_eq!(seqs(to_remove(&loads, 3)), [1, 2]);
        let only_deltas = [l(1, D, 1), l(2, D, 1)];
        assert!(to_remove(&only_deltas, 1).is_empty());
    }
}

//! Cluster-wide identity allocation in etcd.
//!
//! Contract of [`allocate`] (label set L, node N, N's lease):
//! 1. If some node already references L (a key under `value/<L>/`), take its number n and
//!    add N's reference, in a transaction that holds only while the master key `id/<n>` still
//!    says L (so a reference never outlives its master unseen).
//! 2. Otherwise probe numbers in the order single-file mode uses
//!    ([`crate::policy::identity::label_set_slot`] and on, wrapping in 256..=65535): for each
//!    n, a transaction "if `id/<n>` is absent: create it with L and N's reference; else read
//!    it". Absent: n is L's. Present with L: another node won the race for L; add N's
//!    reference as in 1. Present with other labels: the next n.
//! 3. Every failed step is retried up to [`MAX_ATTEMPTS`] times from 1, so two nodes racing
//!    for one label set meet at the same first free key and agree; a node that lost a race
//!    for the slot to another label set moves on. No lock is needed: the probe order is a
//!    pure function of L, and the create is atomic.
//! - The number equals single-file mode's whenever no two label sets of the cluster collide.
//!
//! Contract of [`collect_garbage`]: a master key whose label set no node references is
//! deleted, only if it is unchanged since it was found unreferenced on the previous run
//! ([`Garbage`] remembers mod revisions between runs), so a master key being taken by an
//! allocation that started between the two looks is kept (the allocation adds its reference
//! within milliseconds; runs are [`crate::cluster::agent`]'s GC interval apart).

use std::collections::{BTreeMap, BTreeSet};

use super::etcd::{Client, Compare, EtcdError, Op};
use super::layout;
use crate::model::Labels;
use crate::policy::identity::{canonical_labels, label_set_slot, Identity};

/// Attempts of the whole allocation before giving up (Cilium's `maxAllocAttempts`).
pub const MAX_ATTEMPTS: usize = 16;

/// Why an identity could not be allocated.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("no identity for {labels} after {attempts} attempts (every number taken or contended)")]
    Exhausted { labels: String, attempts: usize },
}

fn next(n: u32) -> u32 {
    if n == Identity::LAST_LABEL_SET {
        Identity::FIRST_LABEL_SET
    } else {
        n + 1
    }
}

/// Allocates (or joins) the cluster's identity of `labels` for `node`; see the module contract.
pub fn allocate(etcd: &Client, labels: &Labels, node: &str, lease: i64) -> Result<u32, AllocError> {
    let text = canonical_labels(labels).into_bytes();
    let reference = layout::identity_ref_key(labels, node).into_bytes();
    let span = (Identity::LAST_LABEL_SET - Identity::FIRST_LABEL_SET + 1) as usize;
    for _ in 0..MAX_ATTEMPTS {
        // 1. Already known to the cluster?
        let known = etcd.range(layout::identity_ref_prefix(labels).as_bytes(), true)?;
        if let Some(n) =
            known.kvs.iter().find_map(|kv| std::str::from_utf8(&kv.value).ok()?.parse::<u32>().ok())
        {
            if join(etcd, n, &text, &reference, lease)? {
                return Ok(n);
            }
            continue;
        }
        // 2. Probe from the label set's slot.
        let mut n = label_set_slot(labels);
        let mut restart = false;
        for _ in 0..span {
            let master = layout::identity_key(n).into_bytes();
            let created = etcd.txn(
                &[Compare::Absent(master.clone())],
                &[
                    Op::Put { key: master.clone(), value: text.clone(), lease: 0 },
                    Op::Put { key: reference.clone(), value: n.to_string().into_bytes(), lease },
                ],
                &[Op::Get(master.clone())],
            )?;
            if created.succeeded {
                return Ok(n);
            }
            match created.kvs.first() {
                Some(kv) if kv.value == text => {
                    if join(etcd, n, &text, &reference, lease)? {
                        return Ok(n);
                    }
                    restart = true;
                    break;
                }
                Some(_) => n = next(n),
                // Deleted between the compare and the read (collected): try it again.
                None => {
                    restart = true;
                    break;
                }
            }
        }
        if !restart {
            break;
        }
    }
    Err(AllocError::Exhausted { labels: String::from_utf8_lossy(&text).into_owned(), attempts: MAX_ATTEMPTS })
}

/// Adds `reference` -> n under `lease` if the master key `id/<n>` still holds `text`.
fn join(etcd: &Client, n: u32, text: &[u8], reference: &[u8], lease: i64) -> Result<bool, EtcdError> {
    let master = layout::identity_key(n).into_bytes();
    let joined = etcd.txn(
        &[Compare::ValueIs(master, text.to_vec())],
        &[Op::Put { key: reference.to_vec(), value: n.to_string().into_bytes(), lease }],
        &[],
    )?;
    Ok(joined.succeeded)
}

/// What the garbage collector saw unreferenced on its last run: master key -> mod revision.
#[derive(Debug, Default)]
pub struct Garbage {
    unreferenced: BTreeMap<u32, i64>,
}

/// Deletes master keys unreferenced on this run and the previous one (module contract).
/// Returns the numbers deleted.
pub fn collect_garbage(etcd: &Client, garbage: &mut Garbage) -> Result<Vec<u32>, EtcdError> {
    let masters = etcd.list(layout::IDENTITY_IDS.as_bytes())?;
    let refs = etcd.list(layout::IDENTITY_REFS.as_bytes())?;
    let referenced: BTreeSet<u32> =
        refs.kvs.iter().filter_map(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok()).collect();
    let mut now = BTreeMap::new();
    let mut deleted = Vec::new();
    for kv in &masters.kvs {
        let Some(n) = kv.key_str().strip_prefix(layout::IDENTITY_IDS).and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if referenced.contains(&n) {
            continue;
        }
        if garbage.unreferenced.get(&n) == Some(&kv.mod_revision) {
            let gone = etcd.txn(
                &[Compare::ModRevisionIs(kv.key.clone(), kv.mod_revision)],
                &[Op::Delete(kv.key.clone())],
                &[],
            )?;
            if gone.succeeded {
                deleted.push(n);
                continue;
            }
        }
        now.insert(n, kv.mod_revision);
    }
    garbage.unreferenced = now;
    Ok(deleted)
}

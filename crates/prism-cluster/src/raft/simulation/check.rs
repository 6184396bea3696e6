//! The invariants checked after every step of a simulation, over what each running copy of
//! a group holds: its Raft state, its log on disk, and its applied state.

use std::collections::BTreeMap;
use std::sync::Arc;

use prism_core::log::ShardLog;

use crate::rpc::GroupId;

/// One running copy of a group, as the checker sees it.
pub struct CopyView {
    pub node: u64,
    pub leader: bool,
    pub term: u64,
    /// (term, index) of the last applied entry.
    pub applied: Option<(u64, u64)>,
    pub checksum: u64,
    pub log: Arc<ShardLog>,
}

/// An entry as a log holds it: its term and a digest of its bytes.
type LogEntries = BTreeMap<u64, (u64, u64)>;

fn entries(log: &ShardLog) -> Result<(u64, LogEntries), String> {
    let first = log.first_index();
    let last = log.last_index();
    let mut out = BTreeMap::new();
    if last >= first {
        for entry in log
            .read(first..last + 1, usize::MAX)
            .map_err(|e| format!("a log cannot be read: {e}"))?
        {
            out.insert(
                entry.id.index,
                (entry.id.term, xxhash_rust::xxh3::xxh3_64(&entry.payload)),
            );
        }
    }
    Ok((first, out))
}

#[derive(Default)]
pub struct Checker {
    /// Who led each group in each term.
    leaders: BTreeMap<(GroupId, u64), u64>,
    /// The content checksum seen at each applied log id, per group.
    applied: BTreeMap<GroupId, BTreeMap<(u64, u64), u64>>,
    /// For each acknowledged entry, the highest term any copy had reached when the checker
    /// first saw the acknowledgement: every leader of a later term must hold the entry.
    /// (A leader of an earlier term, cut off and unaware, may lack it.)
    terms_at_ack: BTreeMap<(GroupId, (u64, u64)), u64>,
}

impl Checker {
    /// Checks `copies` of `group`; `acknowledged` are the (term, index) of its writes that
    /// were acknowledged as committed.
    pub fn check(
        &mut self,
        group: &GroupId,
        copies: &[CopyView],
        acknowledged: &[(u64, u64)],
    ) -> Result<(), String> {
        // Election safety: at most one leader per term.
        for copy in copies.iter().filter(|c| c.leader) {
            let first = *self
                .leaders
                .entry((group.clone(), copy.term))
                .or_insert(copy.node);
            if first != copy.node {
                return Err(format!(
                    "{group}: nodes {first} and {} both led term {}",
                    copy.node, copy.term
                ));
            }
        }
        // State machine safety: the same applied log id, the same content.
        let seen = self.applied.entry(group.clone()).or_default();
        for copy in copies {
            if let Some(applied) = copy.applied {
                let first = *seen.entry(applied).or_insert(copy.checksum);
                if first != copy.checksum {
                    return Err(format!(
                        "{group}: node {} applied up to {applied:?} holds checksum {:x}, another copy at the same log id held {first:x}",
                        copy.node, copy.checksum
                    ));
                }
            }
        }
        let logs = copies
            .iter()
            .map(|c| entries(&c.log).map(|e| (c, e)))
            .collect::<Result<Vec<_>, _>>()?;
        // Log matching: where two logs hold an entry of the same term at the same index,
        // they hold the same entries up to it.
        for (i, (a, (_, a_log))) in logs.iter().enumerate() {
            for (b, (_, b_log)) in logs.iter().skip(i + 1) {
                let mut matched = false;
                for (index, a_entry) in a_log.iter().rev() {
                    let Some(b_entry) = b_log.get(index) else {
                        continue;
                    };
                    if matched && a_entry != b_entry {
                        return Err(format!(
                            "{group}: nodes {} and {} share an entry of a later term but differ at index {index}: {a_entry:?} against {b_entry:?}",
                            a.node, b.node
                        ));
                    }
                    if a_entry.0 == b_entry.0 {
                        if a_entry != b_entry {
                            return Err(format!(
                                "{group}: nodes {} and {} hold different entries of term {} at index {index}",
                                a.node, b.node, a_entry.0
                            ));
                        }
                        matched = true;
                    }
                }
            }
        }
        // Leader completeness: a leader elected after an entry was acknowledged holds it (in
        // its log, or purged behind its snapshot).
        let highest = copies.iter().map(|c| c.term).max().unwrap_or(0);
        let floors: Vec<((u64, u64), u64)> = acknowledged
            .iter()
            .map(|&id| {
                let floor = *self
                    .terms_at_ack
                    .entry((group.clone(), id))
                    .or_insert(highest.max(id.0));
                (id, floor)
            })
            .collect();
        for (copy, (first, log)) in logs.iter().filter(|(c, _)| c.leader) {
            for &((term, index), _) in floors.iter().filter(|(_, floor)| copy.term > *floor) {
                if index < *first {
                    continue;
                }
                match log.get(&index) {
                    Some((t, _)) if *t == term => {}
                    other => {
                        return Err(format!(
                            "{group}: node {}, leader of term {}, lacks the acknowledged entry ({term}, {index}); it holds {other:?}",
                            copy.node, copy.term
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

//! The route table's index: a tree of path segments, so that finding the routes that can
//! match a path costs one map probe per segment of the path, however many routes there are.
//!
//! Each node is reached by a sequence of segments; its children are the literal segments
//! that follow (one hash probe) and at most one `{param}`. A route sits on the node its
//! pattern ends at, as an exact route or a prefix (`/*`). A lookup walks the path through
//! every branch that fits (a literal and a parameter can both fit one segment), collecting
//! the prefix routes of every node on the way and the exact routes of the nodes where the
//! path ends. Those candidates, in table order (most specific first), are what
//! [`super::RouteTable::lookup`] decides among, with the same rules as a scan of the whole
//! table: the index only leaves out routes that cannot match.
//!
//! When any route ignores case, literal segments are keyed in ASCII lower case, so the
//! candidates include every route that matches without regard to case: a case-sensitive
//! route among them is what makes a respelling of it refused.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Route, Segment};

/// Candidates held without allocating; more spill to the heap.
const INLINE: usize = 32;
/// Longest segment folded to lower case on the stack.
const FOLD_BUFFER: usize = 128;

#[derive(Debug, Default)]
struct Node {
    /// Children by literal segment (lower case when the index folds case). Hashed with a
    /// fast seeded hash: the keys come from configuration, a probe costs a few nanoseconds.
    literal: HashMap<Box<[u8]>, u32, foldhash::fast::RandomState>,
    /// The child for a `{param}` segment.
    param: Option<u32>,
    /// Routes (table positions) whose exact pattern ends here.
    exact: Vec<u32>,
    /// Routes whose prefix pattern ends here.
    prefix: Vec<u32>,
}

/// The index of a route table.
#[derive(Debug, Default)]
pub(super) struct Index {
    /// `nodes[0]` is the root (the path `/`); empty for an empty table.
    nodes: Vec<Node>,
    /// Whether literal segments are keyed in lower case.
    fold_case: bool,
}

/// The table positions of the routes that can match a path.
pub(super) struct Candidates {
    inline: [u32; INLINE],
    len: usize,
    spilled: Vec<u32>,
}

impl Candidates {
    pub(super) fn new() -> Self {
        Self {
            inline: [0; INLINE],
            len: 0,
            spilled: Vec::new(),
        }
    }

    fn extend(&mut self, routes: &[u32]) {
        for &route in routes {
            if self.len < INLINE {
                self.inline[self.len] = route;
                self.len += 1;
            } else {
                self.spilled.push(route);
            }
        }
    }

    /// Every candidate, in table order.
    pub(super) fn sorted(&mut self) -> &[u32] {
        if self.spilled.is_empty() {
            let held = &mut self.inline[..self.len];
            held.sort_unstable();
            held
        } else {
            self.spilled.extend_from_slice(&self.inline[..self.len]);
            self.len = 0;
            self.spilled.sort_unstable();
            &self.spilled
        }
    }
}

impl Index {
    /// Indexes `routes` (in table order); `fold_case` when any of them ignores case.
    pub(super) fn new(routes: &[Arc<Route>], fold_case: bool) -> Self {
        let mut index = Self {
            nodes: vec![Node::default()],
            fold_case,
        };
        for (position, route) in routes.iter().enumerate() {
            let position = u32::try_from(position).unwrap_or(u32::MAX);
            let mut node = 0usize;
            for segment in &route.segments {
                let next = index.nodes.len() as u32;
                let child = match segment {
                    Segment::Literal(literal) => {
                        let key: Box<[u8]> = if fold_case {
                            literal.to_ascii_lowercase().into_bytes().into()
                        } else {
                            literal.as_bytes().into()
                        };
                        *index.nodes[node].literal.entry(key).or_insert(next)
                    }
                    Segment::Param => *index.nodes[node].param.get_or_insert(next),
                };
                if child == next {
                    index.nodes.push(Node::default());
                }
                node = child as usize;
            }
            let node = &mut index.nodes[node];
            if route.prefix {
                node.prefix.push(position);
            } else {
                node.exact.push(position);
            }
        }
        index
    }

    /// Adds to `out` every route that can match `path`.
    pub(super) fn candidates(&self, path: &str, out: &mut Candidates) {
        let (Some(root), Some(rest)) = (self.nodes.first(), path.strip_prefix('/')) else {
            return;
        };
        out.extend(&root.prefix);
        if rest.is_empty() {
            // `/` itself: only the root's routes.
            out.extend(&root.exact);
            return;
        }
        self.walk(root, rest, out);
    }

    /// Follows `rest` (the path after a `/`, one segment or more) down from `node`.
    fn walk(&self, node: &Node, rest: &str, out: &mut Candidates) {
        let (part, tail) = match rest.split_once('/') {
            Some((part, tail)) => (part, Some(tail)),
            None => (rest, None),
        };
        if let Some(child) = self.literal_child(node, part.as_bytes()) {
            self.enter(child, tail, out);
        }
        if !part.is_empty()
            && let Some(child) = node.param
        {
            self.enter(child, tail, out);
        }
    }

    fn enter(&self, child: u32, tail: Option<&str>, out: &mut Candidates) {
        let child = &self.nodes[child as usize];
        out.extend(&child.prefix);
        match tail {
            None => out.extend(&child.exact),
            Some(tail) => self.walk(child, tail, out),
        }
    }

    fn literal_child(&self, node: &Node, part: &[u8]) -> Option<u32> {
        if node.literal.is_empty() {
            return None;
        }
        if !self.fold_case {
            return node.literal.get(part).copied();
        }
        if part.len() <= FOLD_BUFFER {
            let mut buffer = [0u8; FOLD_BUFFER];
            let folded = &mut buffer[..part.len()];
            folded.copy_from_slice(part);
            folded.make_ascii_lowercase();
            node.literal.get(&*folded).copied()
        } else {
            node.literal.get(&*part.to_ascii_lowercase()).copied()
        }
    }
}

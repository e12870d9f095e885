//! Maps between byte offsets in a TOML document and dotted key paths (`peers[1].id`).
//!
//! serde errors carry a byte span but do not say which key they concern; semantic
//! validation knows the key but not where it is. Both are answered from a tree of the
//! document's keys and values with their spans, built with toml's own span support.
//! The tree cannot be built for a document holding datetimes (toml hands them to serde
//! as a private map), none of which the schema accepts; errors then carry line and column
//! but no key path.

use std::fmt;
use std::ops::Range;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// Formats a path the way users write it: `a.b[2].c`.
pub(crate) fn display_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// The document as a tree of spanned keys and values.
pub(crate) struct Tree {
    root: Spanned<Node>,
}

enum Node {
    Table(Vec<(Spanned<String>, Spanned<Node>)>),
    Array(Vec<Spanned<Node>>),
    Leaf,
}

impl Tree {
    /// Builds the tree, or `None` when the text is not TOML the tree can represent.
    pub(crate) fn parse(text: &str) -> Option<Tree> {
        toml::from_str::<Spanned<Node>>(text)
            .ok()
            .map(|root| Tree { root })
    }

    /// The path of the innermost key or value whose span holds `offset`.
    pub(crate) fn path_at(&self, offset: usize) -> Vec<Seg> {
        let mut path = Vec::new();
        let mut node = &self.root;
        'descend: loop {
            match node.get_ref() {
                Node::Table(entries) => {
                    for (key, value) in entries {
                        if contains(&key.span(), offset) {
                            path.push(Seg::Key(key.get_ref().clone()));
                            return path;
                        }
                        if contains(&value.span(), offset) {
                            path.push(Seg::Key(key.get_ref().clone()));
                            node = value;
                            continue 'descend;
                        }
                    }
                    return path;
                }
                Node::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if contains(&item.span(), offset) {
                            path.push(Seg::Index(i));
                            node = item;
                            continue 'descend;
                        }
                    }
                    return path;
                }
                Node::Leaf => return path,
            }
        }
    }

    /// The span that best shows `path`: the key itself when present, else the deepest
    /// ancestor that is (a key left out of the file points at its table).
    pub(crate) fn span_of(&self, path: &[Seg]) -> Option<Range<usize>> {
        let mut best = None;
        let mut node = &self.root;
        for seg in path {
            match (node.get_ref(), seg) {
                (Node::Table(entries), Seg::Key(k)) => {
                    let Some((key, value)) = entries.iter().find(|(key, _)| key.get_ref() == k)
                    else {
                        return best;
                    };
                    best = Some(key.span());
                    node = value;
                }
                (Node::Array(items), Seg::Index(i)) => {
                    let Some(item) = items.get(*i) else {
                        return best;
                    };
                    // An array-of-tables element's span starts at its `[[...]]` header line;
                    // an inline element's span is the element itself.
                    best = Some(item.span());
                    node = item;
                }
                _ => return best,
            }
        }
        best
    }
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

/// 1-based line and column (in characters) of a byte offset, clamped to the text.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Node::Table(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "top = 1\n[node]\nid = 'a'\n\n[[peers]]\nid = 'b'\n[[peers]]\nid = 'c'\nmacs = ['x', 'y']\n";

    fn key(k: &str) -> Seg {
        Seg::Key(k.to_string())
    }

    #[test]
    fn finds_paths_and_spans() {
        let tree = Tree::parse(DOC).expect("tree");
        let at = |needle: &str, nth: usize| {
            let off = DOC.match_indices(needle).nth(nth).expect("needle").0;
            display_path(&tree.path_at(off))
        };
        assert_eq!(at("top", 0), "top");
        assert_eq!(at("'a'", 0), "node.id");
        assert_eq!(at("'c'", 0), "peers[1].id");
        assert_eq!(at("'y'", 0), "peers[1].macs[1]");

        let span = tree
            .span_of(&[key("peers"), Seg::Index(1), key("id")])
            .expect("span");
        assert_eq!(line_col(DOC, span.start), (8, 1));
        // A missing key falls back to its table.
        let span = tree.span_of(&[key("node"), key("group")]).expect("span");
        assert_eq!(line_col(DOC, span.start).0, 2);
        assert!(tree.span_of(&[key("nothing")]).is_none());
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("x", 99), (1, 2));
        // Inside a multi-byte character: clamps back to its start.
        assert_eq!(line_col("é", 1), (1, 1));
    }
}

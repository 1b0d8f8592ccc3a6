//! A YAML document as a tree of nodes that remember where they came from.
//!
//! Why not deserialize straight into the answer-file types? Serde stops at the first error,
//! and a value that parses but is wrong (a duplicate address, an overlapping CIDR) carries no
//! position once it is a plain `String`. Parsing once into this tree (with the same parser
//! serde-saphyr uses, `granit-parser`) gives every node and every mapping key a line and
//! column, so the structural check ([`super::schema`]) can report *all* unknown fields and
//! wrong types in one run, and semantic validation can point each problem at its field by
//! path ([`Node::locate`]).

use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, ScanError, Span};
use std::collections::HashMap;
use std::fmt;

/// The largest answer file read, in bytes. Real answer files are a few kilobytes.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;
/// The most nodes a document may hold once every alias is expanded.
pub const MAX_NODES: usize = 300_000;
/// The most nodes that aliases may add to the document, all aliases together.
pub const MAX_ALIAS_NODES: usize = 10_000;
/// The deepest nesting of lists and mappings.
pub const MAX_DEPTH: usize = 64;
/// How many characters of a value are shown in a message.
pub const SHOWN_CHARS: usize = 60;

/// A value as shown in a message: control characters escaped, and cut to a readable length
/// with its true length said (`abc… (52428800 characters)`).
pub fn shown(text: &str) -> String {
    let mut out = String::new();
    let mut count = 0usize;
    let mut cut = false;
    for c in text.chars() {
        count += 1;
        if count > SHOWN_CHARS {
            cut = true;
            continue;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if cut {
        out.push_str(&format!("… ({count} characters)"));
    }
    out
}

/// A position in the source: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Loc {
    pub line: usize,
    pub column: usize,
}

impl Loc {
    fn from_span(span: &Span) -> Loc {
        Loc {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// How a scalar was written. Quoted and block scalars are always strings; plain scalars are
/// resolved by the expected type (YAML 1.2 core schema where no type is expected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Quoted,
    Block,
}

/// One node of the document.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub loc: Loc,
    pub kind: NodeKind,
}

/// What a node holds.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    Scalar {
        text: String,
        style: Style,
        /// An explicit core tag such as `!!str` (the suffix only: `str`), if any.
        tag: Option<String>,
    },
    Seq(Vec<Node>),
    /// Keys in document order. Keys are scalars; their own location is kept so that an
    /// unknown or duplicate key can be pointed at.
    Map(Vec<(Key, Node)>),
}

/// A mapping key.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub text: String,
    pub loc: Loc,
}

/// One step of a path into the document: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path into the document, printed as `spec.hosts[2].address`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path(pub Vec<Seg>);

impl Path {
    pub fn root() -> Path {
        Path(Vec::new())
    }

    /// This path extended by a key.
    pub fn key(&self, k: &str) -> Path {
        let mut p = self.0.clone();
        p.push(Seg::Key(k.to_owned()));
        Path(p)
    }

    /// This path extended by an index.
    pub fn index(&self, i: usize) -> Path {
        let mut p = self.0.clone();
        p.push(Seg::Index(i));
        Path(p)
    }

    /// Parses `spec.hosts[2].address` (used by tests and declarations).
    pub fn parse(s: &str) -> Path {
        let mut segs = Vec::new();
        for part in s.split('.').filter(|p| !p.is_empty()) {
            let mut rest = part;
            if let Some(b) = rest.find('[') {
                segs.push(Seg::Key(rest[..b].to_owned()));
                rest = &rest[b..];
                while let Some(stripped) = rest.strip_prefix('[') {
                    let end = stripped.find(']').unwrap_or(stripped.len());
                    if let Ok(i) = stripped[..end].parse() {
                        segs.push(Seg::Index(i));
                    }
                    rest = stripped.get(end + 1..).unwrap_or("");
                }
            } else {
                segs.push(Seg::Key(rest.to_owned()));
            }
        }
        Path(segs)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(document)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Why a document could not be read as a tree.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub loc: Loc,
    pub message: String,
    pub hint: Option<String>,
}

impl Node {
    /// The scalar's text, if this is a scalar.
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// Whether this node is a YAML null (`~`, `null`, empty), written plain.
    pub fn is_null(&self) -> bool {
        match &self.kind {
            NodeKind::Scalar {
                text,
                style: Style::Plain,
                tag,
            } => {
                tag.as_deref().is_none_or(|t| t == "null")
                    && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL")
            }
            _ => false,
        }
    }

    /// The child at `seg`, if any.
    pub fn child(&self, seg: &Seg) -> Option<&Node> {
        match (&self.kind, seg) {
            (NodeKind::Map(entries), Seg::Key(k)) => {
                entries.iter().find(|(key, _)| &key.text == k).map(|e| &e.1)
            }
            (NodeKind::Seq(items), Seg::Index(i)) => items.get(*i),
            _ => None,
        }
    }

    /// The node at `path`, if it exists.
    pub fn get(&self, path: &Path) -> Option<&Node> {
        let mut node = self;
        for seg in &path.0 {
            node = node.child(seg)?;
        }
        Some(node)
    }

    /// Where `path` points: the value's location if it exists, else the location of the
    /// deepest ancestor that does (so a missing field points at the mapping it is missing
    /// from).
    pub fn locate(&self, path: &Path) -> Loc {
        let mut node = self;
        for seg in &path.0 {
            match node.child(seg) {
                Some(n) => node = n,
                None => break,
            }
        }
        node.loc
    }

    /// The location of the *key* at the end of `path` (for unknown or duplicate keys).
    pub fn locate_key(&self, path: &Path) -> Loc {
        let Some((last, parent)) = path.0.split_last() else {
            return self.loc;
        };
        match (self.get(&Path(parent.to_vec())), last) {
            (
                Some(Node {
                    kind: NodeKind::Map(entries),
                    ..
                }),
                Seg::Key(k),
            ) => entries
                .iter()
                .find(|(key, _)| &key.text == k)
                .map(|(key, _)| key.loc)
                .unwrap_or_else(|| self.locate(path)),
            _ => self.locate(path),
        }
    }
}

/// Parses a single YAML document into a [`Node`] tree.
///
/// Refuses: more than one document, duplicate keys in a mapping, non-scalar keys, merge keys
/// (`<<`), and aliases to undefined anchors. An empty document is an error too (an answer
/// file is never empty).
///
/// Bounded: a file over [`MAX_FILE_BYTES`], a tree over [`MAX_NODES`] nodes, aliases that
/// add more than [`MAX_ALIAS_NODES`] nodes (an "alias bomb") or nesting deeper than
/// [`MAX_DEPTH`] are refused before they cost memory or time.
pub fn parse(text: &str) -> Result<Node, ParseError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(ParseError {
            loc: Loc { line: 1, column: 1 },
            message: format!(
                "the file is {} bytes, more than an answer file can be ({} bytes at most)",
                text.len(),
                MAX_FILE_BYTES
            ),
            hint: Some("is this the answer file? an answer file is a few kilobytes".into()),
        });
    }
    let mut builder = Builder::default();
    let parser = Parser::new_from_str(text);
    for item in parser {
        let (event, span) = item.map_err(scan_error)?;
        builder.event(event, span)?;
    }
    match builder.root {
        Some(root) => Ok(root),
        None => Err(ParseError {
            loc: Loc { line: 1, column: 1 },
            message: "the file holds no YAML document".into(),
            hint: Some("start from one of the examples in docs/examples/".into()),
        }),
    }
}

fn scan_error(e: ScanError) -> ParseError {
    ParseError {
        loc: Loc {
            line: e.marker().line(),
            column: e.marker().col() + 1,
        },
        message: format!("invalid YAML: {}", e.info()),
        hint: Some(
            "check the indentation (spaces, not tabs) and quote values that contain `: ` or start with `{`, `[`, `*`, `&`, `!`, `%` or `@`".into(),
        ),
    }
}

enum Frame {
    Seq {
        loc: Loc,
        anchor: usize,
        /// The node count when this collection started (its size is the difference).
        start: usize,
        items: Vec<Node>,
    },
    Map {
        loc: Loc,
        anchor: usize,
        start: usize,
        entries: Vec<(Key, Node)>,
        /// The keys seen so far and their line, for a linear duplicate check.
        seen: HashMap<String, usize>,
        pending_key: Option<Key>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    /// Each anchor's node and how many nodes it holds.
    anchors: HashMap<usize, (Node, usize)>,
    root: Option<Node>,
    documents: usize,
    /// Nodes in the tree so far, aliases expanded.
    nodes: usize,
    /// Nodes added by aliases so far.
    alias_nodes: usize,
}

fn too_big(loc: Loc, what: String) -> ParseError {
    ParseError {
        loc,
        message: what,
        hint: Some(
            "an answer file needs no more than a few hundred values; write the values out instead of repeating anchors".into(),
        ),
    }
}

impl Builder {
    fn count(&mut self, loc: Loc, n: usize) -> Result<(), ParseError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(too_big(
                loc,
                format!("the document holds more than {MAX_NODES} values"),
            ));
        }
        Ok(())
    }

    fn open(&mut self, loc: Loc) -> Result<(), ParseError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(too_big(
                loc,
                format!("lists and mappings are nested more than {MAX_DEPTH} deep"),
            ));
        }
        self.count(loc, 1)
    }

    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), ParseError> {
        let loc = Loc::from_span(&span);
        match event {
            Event::DocumentStart(..) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(ParseError {
                        loc,
                        message: "the file holds more than one YAML document (`---`)".into(),
                        hint: Some(
                            "an answer file describes one cluster: keep one document".into(),
                        ),
                    });
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let style = match style {
                    ScalarStyle::Plain => Style::Plain,
                    ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted => Style::Quoted,
                    _ => Style::Block,
                };
                let tag = tag.and_then(|t| t.core_suffix().map(str::to_owned));
                let node = Node {
                    loc,
                    kind: NodeKind::Scalar {
                        text: text.into_owned(),
                        style,
                        tag,
                    },
                };
                self.count(loc, 1)?;
                if anchor != 0 {
                    self.anchors.insert(anchor, (node.clone(), 1));
                }
                self.push(node)?;
            }
            Event::Alias(id) => {
                let Some(size) = self.anchors.get(&id).map(|a| a.1) else {
                    return Err(ParseError {
                        loc,
                        message: "alias to an anchor that is not defined".into(),
                        hint: None,
                    });
                };
                // Checked before the copy is made: an alias bomb is refused, not expanded.
                self.alias_nodes = self.alias_nodes.saturating_add(size);
                if self.alias_nodes > MAX_ALIAS_NODES {
                    return Err(too_big(
                        loc,
                        format!("aliases (`*name`) expand to more than {MAX_ALIAS_NODES} values"),
                    ));
                }
                self.count(loc, size)?;
                let Some(mut node) = self.anchors.get(&id).map(|a| a.0.clone()) else {
                    return Ok(());
                };
                node.loc = loc;
                self.push(node)?;
            }
            Event::SequenceStart(_, anchor, _) => {
                self.open(loc)?;
                self.stack.push(Frame::Seq {
                    loc,
                    anchor,
                    start: self.nodes,
                    items: Vec::new(),
                })
            }
            Event::MappingStart(_, anchor, _) => {
                self.open(loc)?;
                self.stack.push(Frame::Map {
                    loc,
                    anchor,
                    start: self.nodes,
                    entries: Vec::new(),
                    seen: HashMap::new(),
                    pending_key: None,
                })
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let nodes = self.nodes;
                let node = match self.stack.pop() {
                    Some(Frame::Seq {
                        loc,
                        anchor,
                        start,
                        items,
                    }) => {
                        let n = Node {
                            loc,
                            kind: NodeKind::Seq(items),
                        };
                        if anchor != 0 {
                            self.anchors.insert(anchor, (n.clone(), nodes - start + 1));
                        }
                        n
                    }
                    Some(Frame::Map {
                        loc,
                        anchor,
                        start,
                        entries,
                        ..
                    }) => {
                        let n = Node {
                            loc,
                            kind: NodeKind::Map(entries),
                        };
                        if anchor != 0 {
                            self.anchors.insert(anchor, (n.clone(), nodes - start + 1));
                        }
                        n
                    }
                    None => return Ok(()),
                };
                self.push(node)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn push(&mut self, node: Node) -> Result<(), ParseError> {
        match self.stack.last_mut() {
            None => {
                self.root = Some(node);
                Ok(())
            }
            Some(Frame::Seq { items, .. }) => {
                items.push(node);
                Ok(())
            }
            Some(Frame::Map {
                entries,
                seen,
                pending_key,
                ..
            }) => match pending_key.take() {
                Some(key) => {
                    entries.push((key, node));
                    Ok(())
                }
                None => {
                    let NodeKind::Scalar { text, .. } = &node.kind else {
                        return Err(ParseError {
                            loc: node.loc,
                            message: "a mapping key must be a plain word, not a list or a mapping"
                                .into(),
                            hint: None,
                        });
                    };
                    if text == "<<" {
                        return Err(ParseError {
                            loc: node.loc,
                            message: "merge keys (`<<`) are not supported in an answer file".into(),
                            hint: Some(
                                "write the fields out, or use the shared `spec.ssh` defaults"
                                    .into(),
                            ),
                        });
                    }
                    if let Some(first) = seen.get(text.as_str()) {
                        return Err(ParseError {
                            loc: node.loc,
                            message: format!(
                                "duplicate key `{}` (first at line {first})",
                                shown(text)
                            ),
                            hint: Some("remove one of them: YAML keeps only one, silently".into()),
                        });
                    }
                    seen.insert(text.clone(), node.loc.line);
                    *pending_key = Some(Key {
                        text: text.clone(),
                        loc: node.loc,
                    });
                    Ok(())
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_carry_line_and_column() {
        let doc = parse("a: 1\nb:\n  - x\n  - c: \"q\"\n").unwrap();
        assert_eq!(doc.locate(&Path::parse("a")), Loc { line: 1, column: 4 });
        assert_eq!(
            doc.locate(&Path::parse("b[1].c")),
            Loc { line: 4, column: 8 }
        );
        assert_eq!(
            doc.locate_key(&Path::parse("b[1].c")),
            Loc { line: 4, column: 5 }
        );
        // A missing field points at its parent.
        assert_eq!(
            doc.locate(&Path::parse("b[1].missing")),
            Loc { line: 4, column: 5 }
        );
        match &doc.get(&Path::parse("b[1].c")).unwrap().kind {
            NodeKind::Scalar { text, style, .. } => {
                assert_eq!(text, "q");
                assert_eq!(*style, Style::Quoted);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn duplicate_keys_are_refused_with_both_lines() {
        let err = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.loc, Loc { line: 3, column: 1 });
        assert!(err.message.contains("first at line 1"), "{}", err.message);
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.loc.line >= 1);
        assert!(err.message.starts_with("invalid YAML"));
    }

    #[test]
    fn aliases_resolve_and_multi_documents_are_refused() {
        let doc = parse("a: &x {p: 1}\nb: *x\n").unwrap();
        assert_eq!(doc.get(&Path::parse("b.p")).unwrap().as_scalar(), Some("1"));
        assert!(parse("a: 1\n---\nb: 2\n").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn paths_print_and_parse() {
        let p = Path::parse("spec.hosts[2].address");
        assert_eq!(p.to_string(), "spec.hosts[2].address");
        assert_eq!(Path::root().key("a").index(0).to_string(), "a[0]");
    }

    /// The 478-byte "billion laughs" of issue 17.
    fn alias_bomb() -> String {
        let mut s = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
            .windows(1)
            .zip(["b", "c", "d", "e", "f", "g", "h", "i", "j"])
        {
            let p = prev[0];
            s.push_str(&format!(
                "{name}: &{name} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
            ));
        }
        s
    }

    #[test]
    fn alias_bomb_is_refused_not_expanded() {
        let started = std::time::Instant::now();
        let err = parse(&alias_bomb()).unwrap_err();
        assert!(err.message.contains("aliases"), "{}", err.message);
        // Refused at the budget: well under a second even in a debug build.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn duplicate_keys_check_is_linear_for_100000_keys() {
        let mut s = String::new();
        for i in 0..100_000 {
            s.push_str(&format!("k{i}: 1\n"));
        }
        s.push_str("k5: 2\n");
        let err = parse(&s).unwrap_err();
        assert!(
            err.message.contains("duplicate key `k5` (first at line 6)"),
            "{}",
            err.message
        );
    }

    #[test]
    fn file_over_the_size_bound_is_refused_with_a_short_message() {
        let s = format!("a: {}\n", "x".repeat(MAX_FILE_BYTES));
        let err = parse(&s).unwrap_err();
        assert!(err.message.len() < 200, "{}", err.message);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let s = format!("a: {}{}\n", "[".repeat(100), "]".repeat(100));
        let err = parse(&s).unwrap_err();
        assert!(err.message.contains("nested"), "{}", err.message);
    }

    #[test]
    fn shown_cuts_long_values_and_escapes_controls() {
        assert_eq!(shown("a\u{1b}[2J"), "a\\u{1b}[2J");
        let long = "y".repeat(1000);
        let s = shown(&long);
        assert!(s.len() < 100 && s.ends_with("(1000 characters)"), "{s}");
    }
}

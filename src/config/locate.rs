//! Maps a field path (`sources[1].sinks[0].file.path`) to where it is written in the YAML, so
//! checks that run after deserialization can still point at a line and column.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser};

/// A 1-based line and column in the configuration file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Positions of every key and sequence item of one YAML document.
#[derive(Debug, Default)]
pub struct Locator {
    /// Where each key (or sequence item) is written.
    positions: HashMap<String, Position>,
    /// Where each value starts (differs from the key for `key: value`).
    values: HashMap<String, Position>,
    /// Every scalar value with its path, in document order.
    scalars: Vec<(String, String)>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

impl Locator {
    /// Indexes `text`. A document that does not parse yields an empty index (the parse error
    /// itself is reported by the deserializer, with its own position).
    pub fn new(text: &str) -> Self {
        let mut positions = HashMap::new();
        let mut values = HashMap::new();
        let mut scalars = Vec::new();
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let here = Position {
                line: span.start.line(),
                column: span.start.col() + 1,
            };
            match event {
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let path = slot_path(&stack);
                    positions.entry(path.clone()).or_insert(here);
                    values.entry(path.clone()).or_insert(here);
                    stack.push(match event {
                        Event::MappingStart(..) => Frame::Map { path, key: None },
                        _ => Frame::Seq { path, index: 0 },
                    });
                }
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Map {
                        path,
                        key: key @ None,
                    }) = stack.last_mut()
                    {
                        let full = join_key(path, &value);
                        positions.entry(full).or_insert(here);
                        *key = Some(value.into_owned());
                    } else {
                        let path = slot_path(&stack);
                        positions.entry(path.clone()).or_insert(here);
                        values.entry(path.clone()).or_insert(here);
                        scalars.push((path, value.into_owned()));
                        advance(&mut stack);
                    }
                }
                Event::Alias(_) => {
                    let path = slot_path(&stack);
                    positions.entry(path.clone()).or_insert(here);
                    values.entry(path).or_insert(here);
                    advance(&mut stack);
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    advance(&mut stack);
                }
                _ => {}
            }
        }
        Locator {
            positions,
            values,
            scalars,
        }
    }

    /// The path of the one scalar under `parent` written as `value`, if exactly one is: how an
    /// error that only quotes the value it refused finds its field.
    pub fn scalar_under(&self, parent: &str, value: &str) -> Option<&str> {
        let mut found = self.scalars.iter().filter(|(path, v)| {
            v == value
                && path
                    .strip_prefix(parent)
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
        });
        let (path, _) = found.next()?;
        found.next().is_none().then_some(path.as_str())
    }

    /// Where the value of exactly `path` starts, if it is written down.
    pub fn find_value(&self, path: &str) -> Option<Position> {
        self.values.get(path).copied()
    }

    /// The position of `path`, or of its closest enclosing field that is written down
    /// (a missing field is reported where its parent is).
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut current = path;
        loop {
            if let Some(pos) = self.positions.get(current) {
                return Some(*pos);
            }
            let cut = current.rfind(['.', '['])?;
            current = &current[..cut];
        }
    }
}

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn slot_path(stack: &[Frame]) -> String {
    match stack.last() {
        None => String::new(),
        Some(Frame::Map { path, key }) => join_key(path, key.as_deref().unwrap_or("")),
        Some(Frame::Seq { path, index }) => format!("{path}[{index}]"),
    }
}

fn advance(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Map { key, .. }) => *key = None,
        Some(Frame::Seq { index, .. }) => *index += 1,
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_items_and_falls_back_to_parents() {
        let text = "defaults:\n  retry: { initial: 1s }\nsources:\n  - name: a\n    sinks:\n      - file: { path: x }\n  - name: b\n";
        let loc = Locator::new(text);
        assert_eq!(
            loc.find("defaults.retry.initial"),
            Some(Position {
                line: 2,
                column: 12
            })
        );
        assert_eq!(
            loc.find("sources[0].name"),
            Some(Position { line: 4, column: 5 })
        );
        assert_eq!(
            loc.find("sources[0].sinks[0].file.path"),
            Some(Position {
                line: 6,
                column: 17
            })
        );
        assert_eq!(
            loc.find("sources[1]"),
            Some(Position { line: 7, column: 5 })
        );
        assert_eq!(
            loc.find("sources[1].token_url"),
            Some(Position { line: 7, column: 5 })
        );
        assert_eq!(
            loc.find_value("defaults.retry.initial"),
            Some(Position {
                line: 2,
                column: 21
            })
        );
        assert_eq!(loc.find_value("sources[1].token_url"), None);
    }
}

//! YAML text to the configuration model, with serde errors turned into located ones.

use std::path::Path;

use super::locate::{self, Locator};
use super::{Config, ConfigError};

/// The YAML settings every reading of the configuration uses. YAML 1.2 booleans: `yes`, `on`,
/// `no` stay strings (the "Norway problem" is not ours).
///
/// serde-saphyr's default budget stops at 250 000 nodes and 1 000 000 events, about 12 500
/// sources. A node or an event needs at least a byte of text, so those two limits grow with
/// the text instead (the file itself is at most `MAX_CONFIG_BYTES`); the limits that stop an
/// expansion attack — aliases, anchors, alias replay, depth — keep their defaults.
pub(super) fn yaml_options(text: &str) -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    let mut budget = options.budget.take().unwrap_or_default();
    budget.max_nodes = budget.max_nodes.max(text.len());
    budget.max_events = budget.max_events.max(text.len().saturating_mul(2));
    options.budget = Some(budget);
    options
}

/// Deserializes, turning a serde error into a located [`ConfigError`].
pub(super) fn deserialize(
    text: &str,
    file: &Path,
    locator: &Locator,
) -> Result<Config, ConfigError> {
    let mut field_path = String::new();
    let options = yaml_options(text);
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            field_path = normalize_path(&e.path().to_string());
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let message = clean_message(&e);
        // A value refused inside a source's kind-specific (flattened) fields is reported at
        // the source; the value it quotes finds the field.
        if is_source_item(&field_path)
            && let Some(path) =
                refused_value(&message).and_then(|v| locator.scalar_under(&field_path, v))
        {
            field_path = path.to_owned();
        }
        // serde-saphyr knows where the parser stopped; errors raised inside flattened or
        // tagged content only know their field path, which the locator turns into a position.
        let unknown = unknown_field_name(&message)
            .map(|name| join_path(&field_path, name))
            .or_else(|| {
                (message.starts_with("unknown variant") && is_source_item(&field_path))
                    .then(|| format!("{field_path}.kind"))
            });
        // Preference: the unknown key itself; the offending value; the parser's own position;
        // the closest enclosing field.
        let position = unknown
            .as_deref()
            .and_then(|p| locator.find(p))
            .or_else(|| {
                locator
                    .find_value(&field_path)
                    .filter(|_| !field_path.is_empty() && !is_source_item(&field_path))
            })
            .or_else(|| {
                e.location().map(|l| locate::Position {
                    line: l.line() as usize,
                    column: l.column() as usize,
                })
            })
            .filter(|p| p.line > 0)
            .or_else(|| locator.find(&field_path));
        ConfigError {
            file: file.to_owned(),
            position,
            path: unknown.unwrap_or(field_path),
            message,
        }
    })
}

/// serde_path_to_error writes `sources[0].?` style paths; keep ours uniform.
fn normalize_path(p: &str) -> String {
    let p = p.trim_start_matches('.');
    if p == "." {
        String::new()
    } else {
        p.replace(".?", "").replace("?", "")
    }
}

fn join_path(parent: &str, child: &str) -> String {
    if parent.is_empty() || parent == child {
        child.to_owned()
    } else if parent.ends_with(&format!(".{child}")) {
        parent.to_owned()
    } else {
        format!("{parent}.{child}")
    }
}

/// The first line of serde-saphyr's message, without its own location suffix.
fn clean_message(e: &serde_saphyr::Error) -> String {
    let full = e.to_string();
    let first = full.lines().next().unwrap_or_default().trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let first = match first.rfind(" at line ") {
        Some(cut) => &first[..cut],
        None => first,
    };
    // serde-saphyr may lead with its own "line L column C: "; the position is reported apart.
    match first
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((coords, rest)) if coords.contains("column") => rest.to_owned(),
        _ => first.to_owned(),
    }
}

/// `sources[N]` exactly: an unknown variant there is an unknown `kind`.
fn is_source_item(path: &str) -> bool {
    path.strip_prefix("sources[")
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|n| n.parse::<usize>().is_ok())
}

/// The value an error message says it refused: ``found `X` `` (ours), or what follows
/// serde's `invalid type:` / `invalid value:` (``integer `1` ``, `string "x"`).
fn refused_value(message: &str) -> Option<&str> {
    if let Some((_, rest)) = message.split_once("found `") {
        return rest.split('`').next();
    }
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))?;
    let open = rest.find(['`', '"'])?;
    let quote = rest[open..].chars().next()?;
    rest[open + 1..].split(quote).next()
}

fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

//! Whether two sink targets can name the same place once a remote API picks the tenant ids.
//!
//! A target is a pattern: literal text with `{tenant}` placeholders, each standing for any
//! tenant id ([`is_tenant_first`] then [`is_tenant_char`]s). Comparing the patterns as text
//! missed `orders.token` against `{tenant}.token` (a tenant named `orders` writes the other
//! source's file); this decides whether the two languages intersect and returns a place both
//! can produce, so the error can name it.

use std::collections::HashSet;

use crate::names::{is_tenant_char, is_tenant_first};
use crate::sink::TENANT;

/// One step of a pattern.
#[derive(Clone, Copy, PartialEq)]
enum Step {
    /// This character.
    Literal(char),
    /// The first character of a tenant id.
    First,
    /// Any number (zero or more) of further tenant-id characters.
    Rest,
}

fn steps(pattern: &str) -> Vec<Step> {
    let mut out = Vec::with_capacity(pattern.len());
    for (i, part) in pattern.split(TENANT).enumerate() {
        if i > 0 {
            out.extend([Step::First, Step::Rest]);
        }
        out.extend(part.chars().map(Step::Literal));
    }
    out
}

/// A character both single-character steps accept.
fn meet(a: Step, b: Step) -> Option<char> {
    let accepts = |step: Step, c: char| match step {
        Step::Literal(l) => l == c,
        Step::First => is_tenant_first(c),
        Step::Rest => is_tenant_char(c),
    };
    match (a, b) {
        (Step::Literal(c), other) | (other, Step::Literal(c)) => accepts(other, c).then_some(c),
        _ => Some('x'),
    }
}

/// A place both patterns can produce, if there is one. Both without `{tenant}`: equal text.
pub fn common_place(a: &str, b: &str) -> Option<String> {
    // Cheap rejection first: the literal text before the first and after the last
    // placeholder must agree (most targets differ right there).
    let (a_head, b_head) = (a.split(TENANT).next()?, b.split(TENANT).next()?);
    let (a_tail, b_tail) = (a.rsplit(TENANT).next()?, b.rsplit(TENANT).next()?);
    if !(a_head.starts_with(b_head) || b_head.starts_with(a_head))
        || !(a_tail.ends_with(b_tail) || b_tail.ends_with(a_tail))
    {
        return None;
    }
    let (a, b) = (steps(a), steps(b));
    let mut search = Search {
        a: &a,
        b: &b,
        dead: HashSet::new(),
    };
    let mut reversed = search.from(0, 0)?;
    reversed.reverse();
    Some(reversed.into_iter().collect())
}

/// A depth-first search over pairs of positions; a pair that led nowhere is never tried again,
/// so it costs at most `len(a) × len(b)` steps.
struct Search<'a> {
    a: &'a [Step],
    b: &'a [Step],
    dead: HashSet<(usize, usize)>,
}

impl Search<'_> {
    /// The rest of a common place from positions `i` and `j`, reversed.
    fn from(&mut self, i: usize, j: usize) -> Option<Vec<char>> {
        if i == self.a.len() && j == self.b.len() {
            return Some(Vec::new());
        }
        if self.dead.contains(&(i, j)) {
            return None;
        }
        let (x, y) = (self.a.get(i).copied(), self.b.get(j).copied());
        let found = self.next(i, j, x, y);
        if found.is_none() {
            self.dead.insert((i, j));
        }
        found
    }

    /// `c`, then the rest from `i` and `j`.
    fn then(&mut self, c: char, i: usize, j: usize) -> Option<Vec<char>> {
        let mut rest = self.from(i, j)?;
        rest.push(c);
        Some(rest)
    }

    fn next(&mut self, i: usize, j: usize, x: Option<Step>, y: Option<Step>) -> Option<Vec<char>> {
        // `Rest` may end here…
        if x == Some(Step::Rest)
            && let Some(found) = self.from(i + 1, j)
        {
            return Some(found);
        }
        if y == Some(Step::Rest)
            && let Some(found) = self.from(i, j + 1)
        {
            return Some(found);
        }
        match (x?, y?) {
            // …or take one character the other side's single step accepts.
            (Step::Rest, Step::Rest) => None,
            (Step::Rest, single) => meet(Step::Rest, single).and_then(|c| self.then(c, i, j + 1)),
            (single, Step::Rest) => meet(single, Step::Rest).and_then(|c| self.then(c, i + 1, j)),
            (p, q) => meet(p, q).and_then(|c| self.then(c, i + 1, j + 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::common_place;

    #[test]
    fn finds_the_tenant_that_collides() {
        let cases = [
            ("t/orders.token", "t/{tenant}.token", Some("t/orders.token")),
            ("t/{tenant}.token", "t/{tenant}.token", Some("t/x.token")),
            ("t/a-{tenant}", "t/{tenant}-b", Some("t/a-b")),
            ("t/a.token", "t/b.token", None),
            ("t/a.token", "t/a.token", Some("t/a.token")),
            // A tenant id has no `/` and never starts with `.`.
            ("t/sub/x.token", "t/{tenant}.token", None),
            ("t/.x.token", "t/{tenant}.token", None),
            ("t/a.x", "t/a{tenant}", None),
            ("t/a-x", "t/a{tenant}", Some("t/a-x")),
            ("t/{tenant}.token", "t/{tenant}.token.meta", None),
            ("t/{tenant}.token", "u/{tenant}.token", None),
            (
                "secret:///mdsp-{tenant}",
                "secret:///mdsp-orders",
                Some("secret:///mdsp-orders"),
            ),
            (
                "t/{tenant}/token",
                "t/{tenant}.x/token",
                Some("t/x.x/token"),
            ),
        ];
        for (a, b, want) in cases {
            assert_eq!(common_place(a, b).as_deref(), want, "{a} vs {b}");
            assert_eq!(common_place(b, a).is_some(), want.is_some(), "{b} vs {a}");
        }
    }
}

//! Kubernetes resource quantities (`5m`, `16Mi`, `1.5G`, `1e3`), read well enough to refuse a
//! malformed annotation at admission and to compare a memory request with its limit. The API
//! server would refuse the same pod later, with a message that does not name the annotation.

/// A non-negative quantity, as a plain number (`16Mi` is 16 777 216).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Quantity(f64);

/// Suffixes and what they multiply by (Kubernetes `resource.Quantity`).
const SUFFIXES: &[(&str, f64)] = &[
    ("Ki", 1024.0),
    ("Mi", 1_048_576.0),
    ("Gi", 1_073_741_824.0),
    ("Ti", 1_099_511_627_776.0),
    ("Pi", 1_125_899_906_842_624.0),
    ("Ei", 1_152_921_504_606_846_976.0),
    ("n", 1e-9),
    ("u", 1e-6),
    ("m", 1e-3),
    ("k", 1e3),
    ("M", 1e6),
    ("G", 1e9),
    ("T", 1e12),
    ("P", 1e15),
    ("E", 1e18),
];

impl Quantity {
    /// `None` unless `text` is a quantity: digits with at most one `.`, then one suffix or an
    /// exponent (`e3`, `E-2`). Signs are refused: no resource is negative.
    pub fn parse(text: &str) -> Option<Quantity> {
        let end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, suffix) = text.split_at(end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 || text.len() > 64
        {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let scale = if suffix.is_empty() {
            1.0
        } else if let Some(&(_, scale)) = SUFFIXES.iter().find(|(s, _)| *s == suffix) {
            scale
        } else {
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(exponent.parse::<i32>().ok()?)
        };
        let q = value * scale;
        q.is_finite().then_some(Quantity(q))
    }
}

#[cfg(test)]
mod tests {
    use super::Quantity;

    #[test]
    fn reads_what_kubernetes_reads_and_nothing_else() {
        for (text, value) in [
            ("5m", 0.005),
            ("16Mi", 16.0 * 1_048_576.0),
            ("1.5G", 1.5e9),
            ("100", 100.0),
            ("1e3", 1000.0),
            ("2E-1", 0.2),
            (".5", 0.5),
            ("0", 0.0),
        ] {
            assert_eq!(Quantity::parse(text), Some(Quantity(value)), "{text}");
        }
        for text in [
            "", "Mi", "-1", "+1", "1..2", "1.2.3", "16mi", "16 Mi", "1e", "1e+", "1x", "5mm", ".",
            "1e99999",
        ] {
            assert_eq!(Quantity::parse(text), None, "{text:?}");
        }
        assert!(Quantity::parse("64Mi") > Quantity::parse("16Mi"));
        assert!(Quantity::parse("1Gi") > Quantity::parse("1G"));
    }
}

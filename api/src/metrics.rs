//! Tiny helpers to write the Prometheus text exposition format (version 0.0.4) that
//! `GET /metrics` returns. The VMM produces the text; these functions keep names, label
//! escaping and number formatting right.

use std::fmt::Write;

/// The `Content-Type` of a `GET /metrics` answer.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A sample value: integers print exactly, floats use Prometheus' `NaN`/`+Inf`/`-Inf`.
pub trait PrometheusValue {
    /// The value as Prometheus text.
    fn to_prometheus(&self) -> String;
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl PrometheusValue for $t {
            fn to_prometheus(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
int_value!(u8, u16, u32, u64, usize, i32, i64);

impl PrometheusValue for f64 {
    fn to_prometheus(&self) -> String {
        if self.is_nan() {
            "NaN".into()
        } else if self.is_infinite() {
            if *self > 0.0 { "+Inf" } else { "-Inf" }.into()
        } else {
            format!("{self:?}")
        }
    }
}

impl PrometheusValue for bool {
    fn to_prometheus(&self) -> String {
        u8::from(*self).to_string()
    }
}

/// Replaces every character not allowed in a metric or label name (`[a-zA-Z0-9_:]`, not
/// starting with a digit) by `_`.
pub fn sanitize_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// One sample line, newline-terminated: `name{label="value",...} value`.
///
/// ```
/// assert_eq!(
///     api::prometheus_line("dsavmm_dsa_descriptors_total", &[("device", "0"), ("opcode", "memmove")], 42u64),
///     "dsavmm_dsa_descriptors_total{device=\"0\",opcode=\"memmove\"} 42\n"
/// );
/// ```
pub fn prometheus_line(name: &str, labels: &[(&str, &str)], value: impl PrometheusValue) -> String {
    let mut out = sanitize_name(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&sanitize_name(k).replace(':', "_"));
            out.push_str("=\"");
            escape_label_value(v, &mut out);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", value.to_prometheus());
    out
}

/// The `# HELP` and `# TYPE` lines that precede a metric family (`kind`: "counter",
/// "gauge", "untyped"...).
pub fn prometheus_header(name: &str, help: &str, kind: &str) -> String {
    let name = sanitize_name(name);
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    format!("# HELP {name} {help}\n# TYPE {name} {kind}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(prometheus_line("up", &[], 1u8), "up 1\n");
        assert_eq!(
            prometheus_line("a-b.c", &[("l 1", "x\"y\\z\nw")], 2.5f64),
            "a_b_c{l_1=\"x\\\"y\\\\z\\nw\"} 2.5\n"
        );
        assert_eq!(prometheus_line("9x", &[], f64::NAN), "_9x NaN\n");
        assert_eq!(prometheus_line("x", &[], f64::INFINITY), "x +Inf\n");
        assert_eq!(prometheus_line("x", &[], -1i64), "x -1\n");
        assert_eq!(
            prometheus_line("x", &[], u64::MAX),
            "x 18446744073709551615\n"
        );
        assert_eq!(prometheus_line("x", &[], true), "x 1\n");
        assert_eq!(prometheus_line("x", &[], 3.0f64), "x 3.0\n");
        assert_eq!(
            prometheus_header("x_total", "a\nb", "counter"),
            "# HELP x_total a\\nb\n# TYPE x_total counter\n"
        );
    }
}

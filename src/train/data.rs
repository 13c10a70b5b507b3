//! Labelled text data: CSV (a header naming `text` and `label` columns, RFC 4180 quoting), JSONL
//! (`{"text": …, "label": …}` per line) and JSON arrays of such objects. Labels are strings (numbers
//! and booleans are taken as their text), mapped to ids in sorted order.

use crate::error::{Error, Result};
use crate::rng::Rng;

/// One labelled example and the line it started on (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text: String,
    pub label: String,
    pub line: usize,
}

/// A row that could not be read.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    pub line: usize,
    pub reason: String,
}

/// The examples of one file, with the rows that were skipped (only with `skip_bad_rows`).
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub origin: String,
    pub examples: Vec<Example>,
    pub skipped: Vec<BadRow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
    JsonArray,
}

impl Format {
    /// From the file name, else from the first non-blank character.
    pub fn detect(name: &str, text: &str) -> Format {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".csv") || lower.ends_with(".tsv") {
            return Format::Csv;
        }
        if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
            return Format::Jsonl;
        }
        match text.trim_start().chars().next() {
            Some('[') => Format::JsonArray,
            Some('{') => Format::Jsonl,
            _ => Format::Csv,
        }
    }
}

impl Dataset {
    /// Parses file contents. `origin` names the file in errors; with `skip_bad_rows` unreadable rows
    /// are counted in `skipped` instead of failing.
    pub fn parse(bytes: &[u8], origin: &str, skip_bad_rows: bool) -> Result<Dataset> {
        Self::parse_with_hint(bytes, origin, skip_bad_rows, "use --skip-bad-rows to skip such rows")
    }

    /// `parse`, with `hint` saying how to skip unreadable rows where the reader is (a flag on the
    /// command line, a checkbox on the page).
    pub fn parse_with_hint(bytes: &[u8], origin: &str, skip_bad_rows: bool, hint: &str) -> Result<Dataset> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
            Error::file(format!("{origin}:{line}"), "invalid UTF-8: the file must be UTF-8 text")
        })?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if text.trim().is_empty() {
            return Err(Error::file(origin, "the file is empty"));
        }
        let mut ds = Dataset { origin: origin.to_string(), ..Default::default() };
        let rows: Vec<std::result::Result<Example, BadRow>> = match Format::detect(origin, text) {
            Format::Csv => parse_csv(text, origin)?,
            Format::Jsonl => parse_jsonl(text),
            Format::JsonArray => parse_json_array(text, origin)?,
        };
        for r in rows {
            match r {
                Ok(e) => ds.examples.push(e),
                Err(bad) if skip_bad_rows => ds.skipped.push(bad),
                Err(bad) => {
                    return Err(Error::file(format!("{origin}:{}", bad.line), format!("{} ({hint})", bad.reason)))
                }
            }
        }
        if ds.examples.is_empty() {
            return Err(Error::file(origin, "no usable rows: each needs a text and a label"));
        }
        ds.normalize_numeric_labels();
        Ok(ds)
    }

    /// When every label is a number, writes each the one way (`1.0`, `1` and `1e0` are one class,
    /// `1`); `labels()` then orders them by value (2 before 10).
    fn normalize_numeric_labels(&mut self) {
        let values: Option<Vec<f64>> = self.examples.iter().map(|e| numeric_label(&e.label)).collect();
        if let Some(values) = values {
            for (e, v) in self.examples.iter_mut().zip(values) {
                e.label = canonical_number(v);
            }
        }
    }

    /// The labels to train on, from this file's training split `train` (the rest held out in
    /// `valid`): at least two, or an error that says whether the file or the split lacks them.
    pub fn training_labels(&self, train: &Dataset, valid: &Dataset) -> Result<Vec<String>> {
        let all = self.labels();
        let labels = train.labels();
        if all.len() < 2 {
            return Err(Error::file(
                &self.origin,
                format!("needs at least 2 distinct labels, found {}", quote_labels(&all)),
            ));
        }
        if labels.len() < 2 {
            return Err(Error::file(
                &self.origin,
                format!(
                    "the training split ({} rows, {} held out for validation) has only label {}, where the file has {}: hold out less for validation",
                    train.examples.len(),
                    valid.examples.len(),
                    quote_labels(&labels),
                    quote_labels(&all)
                ),
            ));
        }
        Ok(labels)
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(path: &std::path::Path, skip_bad_rows: bool) -> Result<Dataset> {
        let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
        Self::parse(&bytes, &path.display().to_string(), skip_bad_rows)
    }

    /// The distinct labels, sorted: by value when all are numbers, else as text.
    pub fn labels(&self) -> Vec<String> {
        let mut l: Vec<String> = self.examples.iter().map(|e| e.label.clone()).collect();
        l.sort();
        l.dedup();
        if let Some(mut v) = l.iter().map(|s| numeric_label(s).map(|x| (x, s.clone()))).collect::<Option<Vec<_>>>() {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            l = v.into_iter().map(|(_, s)| s).collect();
        }
        l
    }

    /// (label, count) in label order.
    pub fn label_counts(&self) -> Vec<(String, usize)> {
        self.labels()
            .into_iter()
            .map(|l| {
                let n = self.examples.iter().filter(|e| e.label == l).count();
                (l, n)
            })
            .collect()
    }

    /// Label ids under `labels`; a label not in it is an error naming the file and line.
    pub fn label_ids(&self, labels: &[String]) -> Result<Vec<u32>> {
        self.examples
            .iter()
            .map(|e| {
                labels.iter().position(|l| same_label(l, &e.label)).map(|i| i as u32).ok_or_else(|| {
                    Error::file(
                        format!("{}:{}", self.origin, e.line),
                        format!(
                            "label `{}` was not seen in training (known: {})",
                            crate::error::excerpt(&e.label, 40),
                            quote_labels(labels)
                        ),
                    )
                })
            })
            .collect()
    }

    /// A seeded split into (train, validation) with `fraction` of the examples (rounded) held out.
    pub fn split(&self, fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(Error::invalid(format!("validation fraction {fraction} must be in [0, 1)")));
        }
        let mut idx: Vec<usize> = (0..self.examples.len()).collect();
        Rng::new(seed ^ 0x5EED_5B17).shuffle(&mut idx);
        let n_valid = (self.examples.len() as f64 * fraction).round() as usize;
        let pick = |ids: &[usize]| {
            let mut ids = ids.to_vec();
            ids.sort_unstable();
            Dataset {
                origin: self.origin.clone(),
                examples: ids.iter().map(|&i| self.examples[i].clone()).collect(),
                skipped: vec![],
            }
        };
        Ok((pick(&idx[n_valid..]), pick(&idx[..n_valid])))
    }
}

/// Unlabelled texts (distillation's extra data): a `.txt` file with one text per line, JSONL or a JSON
/// array of objects with a "text" field, or CSV with a `text` column; labels, if any, are ignored.
pub fn parse_texts(bytes: &[u8], origin: &str) -> Result<Vec<String>> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::file(format!("{origin}:{line}"), "invalid UTF-8: the file must be UTF-8 text")
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let field = |v: &serde_json::Value, line: usize| -> Result<String> {
        match v.get("text") {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            _ => Err(Error::file(format!("{origin}:{line}"), "needs a non-empty \"text\" string")),
        }
    };
    let out: Vec<String> = if origin.to_ascii_lowercase().ends_with(".txt") {
        text.lines().filter(|l| !l.trim().is_empty()).map(|l| l.to_string()).collect()
    } else {
        match Format::detect(origin, text) {
            Format::Jsonl => text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    let v: serde_json::Value = serde_json::from_str(l)
                        .map_err(|e| Error::file(format!("{origin}:{}", i + 1), format!("not JSON: {e}")))?;
                    field(&v, i + 1)
                })
                .collect::<Result<_>>()?,
            Format::JsonArray => {
                let v: serde_json::Value = serde_json::from_str(text)
                    .map_err(|e| Error::file(format!("{origin}:{}", e.line()), format!("not valid JSON: {e}")))?;
                let arr =
                    v.as_array().ok_or_else(|| Error::file(origin, "expected a JSON array of {\"text\"} objects"))?;
                arr.iter().enumerate().map(|(i, v)| field(v, i + 1)).collect::<Result<_>>()?
            }
            Format::Csv => {
                let sep = csv_separator(text, origin);
                let records =
                    csv_records(text, sep).map_err(|b| Error::file(format!("{origin}:{}", b.line), b.reason))?;
                let Some(((hline, header), rows)) = records.split_first() else {
                    return Err(Error::file(origin, "the file is empty"));
                };
                let Some(ti) = header.iter().position(|h| h.trim().eq_ignore_ascii_case("text")) else {
                    return Err(Error::file(format!("{origin}:{hline}"), "the header must name a `text` column"));
                };
                rows.iter().filter_map(|(_, f)| f.get(ti).filter(|t| !t.trim().is_empty()).cloned()).collect()
            }
        }
    };
    if out.is_empty() {
        return Err(Error::file(origin, "no texts"));
    }
    Ok(out)
}

/// A label written as a plain number (`1`, `-2`, `0.5`, `1.0`, `1e3`), as JSON writes numbers: no
/// leading zeros or `+` (`007` and `+1` are codes, kept as text), and exactly representable when it
/// is an integer (|n| ≤ 2^53), so that two labels never become one by rounding.
fn numeric_label(s: &str) -> Option<f64> {
    let s = s.trim();
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    let int_start = i;
    let n = digits(&mut i);
    if n == 0 || (n > 1 && b[int_start] == b'0') {
        return None;
    }
    let mut significant = n;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        match digits(&mut i) {
            0 => return None,
            f => significant += f,
        }
    }
    // Any two decimals of at most 15 digits are two distinct f64 values; beyond, they may round
    // into one (9007199254740993 and 9007199254740992).
    if significant > 15 {
        return None;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return None;
        }
    }
    let v: f64 = s.parse().ok().filter(|v: &f64| v.is_finite())?;
    (i == b.len() && (v.fract() != 0.0 || v.abs() <= 9_007_199_254_740_992.0)).then_some(v)
}

/// Whether two labels name one class: the same text, or the same number (an adapter trained on
/// `1.0` before labels were normalised, asked about `1`).
pub fn same_label(a: &str, b: &str) -> bool {
    a == b || matches!((numeric_label(a), numeric_label(b)), (Some(x), Some(y)) if x == y)
}

/// The one way a numeric label is written: integers without a fraction, others in the shortest form.
fn canonical_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() <= 9_007_199_254_740_992.0 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Labels for an error message: each quoted, each cut short, at most 10.
fn quote_labels(labels: &[String]) -> String {
    let mut v: Vec<String> = labels.iter().take(10).map(|l| format!("`{}`", crate::error::excerpt(l, 40))).collect();
    if labels.len() > 10 {
        v.push(format!("… ({} in all)", labels.len()));
    }
    v.join(", ")
}

fn label_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn example_from_object(v: &serde_json::Value, line: usize) -> std::result::Result<Example, BadRow> {
    let bad = |reason: &str| BadRow { line, reason: reason.to_string() };
    let obj = v.as_object().ok_or_else(|| bad("expected an object with \"text\" and \"label\""))?;
    let text = match obj.get("text") {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(serde_json::Value::String(_)) => return Err(bad("empty \"text\"")),
        Some(_) => return Err(bad("\"text\" is not a string")),
        None => return Err(bad("no \"text\" field")),
    };
    // "class" is accepted as the label's name too (the UCI sentiment files use it).
    let label = obj.get("label").or_else(|| obj.get("class")).ok_or_else(|| bad("no \"label\" field"))?;
    let label = label_text(label).ok_or_else(|| bad("\"label\" is empty or not a string, number or boolean"))?;
    Ok(Example { text, label, line })
}

fn parse_jsonl(text: &str) -> Vec<std::result::Result<Example, BadRow>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let line = i + 1;
            serde_json::from_str::<serde_json::Value>(l)
                .map_err(|e| BadRow { line, reason: format!("not JSON: {e}") })
                .and_then(|v| example_from_object(&v, line))
        })
        .collect()
}

fn parse_json_array(text: &str, origin: &str) -> Result<Vec<std::result::Result<Example, BadRow>>> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::file(format!("{origin}:{}", e.line()), format!("not valid JSON: {e}")))?;
    let arr =
        v.as_array().ok_or_else(|| Error::file(origin, "expected a JSON array of {\"text\", \"label\"} objects"))?;
    // Elements have no line of their own: report the element's 1-based index as its "line".
    Ok(arr.iter().enumerate().map(|(i, v)| example_from_object(v, i + 1)).collect())
}

/// RFC 4180 records: fields separated by `sep`, optionally quoted with `"`, `""` an escaped quote,
/// newlines allowed inside quotes. Returns (first line, fields) per record; the first unreadable
/// record is an error.
pub fn csv_records(text: &str, sep: char) -> std::result::Result<Records, BadRow> {
    match csv_scan(text, sep, 1) {
        (records, None) => Ok(records),
        (_, Some((bad, _))) => Err(bad),
    }
}

/// `csv_records` that skips what it cannot read: a row with a stray quote is dropped and reading
/// goes on at the next line; a quote never closed drops its row and reading goes on at the line
/// after the row's start (not the rest of the file).
pub fn csv_records_skipping(text: &str, sep: char) -> (Records, Vec<BadRow>) {
    let starts: Vec<usize> = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
    let (mut records, mut bad, mut line) = (vec![], vec![], 1);
    // Each unclosed quote scans to the end before reading resumes: bounded, so that a file of many
    // of them costs a few passes, not one per row.
    let mut budget = 8 * text.len() + (1 << 20);
    loop {
        let from = starts.get(line - 1).copied().unwrap_or(text.len());
        if text.len() - from > budget {
            let reason = "too many unreadable rows before this one: stopped reading here".to_string();
            bad.push(BadRow { line, reason });
            return (records, bad);
        }
        budget -= text.len() - from;
        let (got, err) = csv_scan(&text[from..], sep, line);
        records.extend(got);
        match err {
            None => return (records, bad),
            Some((b, resume)) => {
                bad.push(b);
                if resume <= line || resume > starts.len() {
                    return (records, bad);
                }
                line = resume;
            }
        }
    }
}

/// CSV records: (first line, fields) each.
pub type Records = Vec<(usize, Vec<String>)>;

/// Scans records from `text`, whose first line is line `first`. On an unreadable record, returns the
/// records before it, the error and the line to resume at.
fn csv_scan(text: &str, sep: char, first: usize) -> (Records, Option<(BadRow, usize)>) {
    let mut records = vec![];
    let mut fields: Vec<String> = vec![];
    let mut field = String::new();
    let mut in_quotes = false;
    let mut quoted_field = false;
    let mut line = first;
    let mut start = first;
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        if in_quotes {
            match ch {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                _ => field.push(ch),
            }
            continue;
        }
        match ch {
            '"' if field.is_empty() && !quoted_field => {
                in_quotes = true;
                quoted_field = true;
            }
            '"' => {
                let reason = "a quote inside an unquoted field (quote the whole field and double the inner quotes)";
                return (records, Some((BadRow { line, reason: reason.into() }, line + 1)));
            }
            c if c == sep => {
                fields.push(std::mem::take(&mut field));
                quoted_field = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                quoted_field = false;
                if !(fields.len() == 1 && fields[0].is_empty()) {
                    records.push((start, std::mem::take(&mut fields)));
                }
                fields.clear();
                line += 1;
                start = line;
            }
            _ => {
                if quoted_field {
                    let reason = "text after a closing quote";
                    return (records, Some((BadRow { line, reason: reason.into() }, line + 1)));
                }
                field.push(ch)
            }
        }
    }
    if in_quotes {
        let reason = "a quoted field is never closed";
        return (records, Some((BadRow { line: start, reason: reason.into() }, start + 1)));
    }
    if !field.is_empty() || !fields.is_empty() || quoted_field {
        fields.push(field);
        records.push((start, fields));
    }
    (records, None)
}

/// The field separator of a CSV file: tab for `.tsv`, else whichever of `,` `;` tab `|` its header
/// line holds most often outside quotes (a comma when none): a semicolon-separated export reads as
/// it is, instead of as one column with stray quotes.
pub fn csv_separator(text: &str, origin: &str) -> char {
    if origin.to_ascii_lowercase().ends_with(".tsv") {
        return '\t';
    }
    let header = text.lines().next().unwrap_or("");
    let mut counts = [(',', 0usize), (';', 0), ('\t', 0), ('|', 0)];
    let mut quoted = false;
    for ch in header.chars() {
        if ch == '"' {
            quoted = !quoted;
        } else if !quoted {
            if let Some(c) = counts.iter_mut().find(|(c, _)| *c == ch) {
                c.1 += 1;
            }
        }
    }
    let best = counts.iter().max_by_key(|(c, n)| (*n, *c == ',')).unwrap();
    if best.1 == 0 {
        ','
    } else {
        best.0
    }
}

/// The rows of a CSV file, unreadable ones (a stray or unclosed quote) among them as errors in
/// line order: the caller fails on the first or skips them.
fn parse_csv(text: &str, origin: &str) -> Result<Vec<std::result::Result<Example, BadRow>>> {
    let sep = csv_separator(text, origin);
    let (records, unreadable) = csv_records_skipping(text, sep);
    let Some(((hline, header), rows)) = records.split_first() else {
        return Err(Error::file(origin, "the file is empty"));
    };
    let col = |name: &str| header.iter().position(|h| h.trim().eq_ignore_ascii_case(name));
    let (Some(ti), Some(li)) = (col("text"), col("label")) else {
        return Err(Error::file(
            format!("{origin}:{hline}"),
            format!("the header must name a `text` and a `label` column; it has: {}", header.join(", ")),
        ));
    };
    let rows = rows.iter().map(|(line, f)| {
        let bad = |reason: String| BadRow { line: *line, reason };
        // More fields than the header names: a separator inside an unquoted text, most likely.
        if f.len() > header.len() {
            return Err(bad(format!(
                "{} fields where the header has {} (quote a text that holds `{}`)",
                f.len(),
                header.len(),
                if sep == '\t' { "\\t".to_string() } else { sep.to_string() }
            )));
        }
        let text = f.get(ti).ok_or_else(|| bad(format!("{} fields, no `text` column", f.len())))?;
        let label = f.get(li).ok_or_else(|| bad(format!("{} fields, no `label` column", f.len())))?;
        if text.trim().is_empty() {
            return Err(bad("empty text".into()));
        }
        if label.trim().is_empty() {
            return Err(bad("empty label".into()));
        }
        Ok(Example { text: text.clone(), label: label.trim().to_string(), line: *line })
    });
    let mut out: Vec<std::result::Result<Example, BadRow>> = rows.collect();
    out.extend(unreadable.into_iter().map(Err));
    out.sort_by_key(|r| match r {
        Ok(e) => e.line,
        Err(b) => b.line,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_follows_rfc4180() {
        let csv = "id,text,label\r\n1,\"Hello, \"\"world\"\"\",pos\n2,\"two\nlines\",neg\n3,plain,pos\n";
        let ds = Dataset::parse(csv.as_bytes(), "d.csv", false).unwrap();
        assert_eq!(ds.examples.len(), 3);
        assert_eq!(ds.examples[0].text, "Hello, \"world\"");
        assert_eq!(ds.examples[1].text, "two\nlines");
        assert_eq!(ds.examples[2].line, 5, "the record after a two-line field starts on line 5");
        assert_eq!(ds.labels(), vec!["neg", "pos"]);
    }

    #[test]
    fn bad_rows_name_file_and_line() {
        let csv = "text,label\nfine,a\nno label here\nok,b\n";
        let e = Dataset::parse(csv.as_bytes(), "d.csv", false).unwrap_err().to_string();
        assert!(e.starts_with("d.csv:3:") && e.contains("no `label` column") && e.contains("--skip-bad-rows"), "{e}");
        let ds = Dataset::parse(csv.as_bytes(), "d.csv", true).unwrap();
        assert_eq!(ds.examples.len(), 2);
        assert_eq!(ds.skipped, vec![BadRow { line: 3, reason: "1 fields, no `label` column".into() }]);

        let e = Dataset::parse(b"a,b\n1,2\n", "d.csv", false).unwrap_err().to_string();
        assert!(e.contains("d.csv:1") && e.contains("`text` and a `label`"), "{e}");
        let e = Dataset::parse(b"", "e.csv", false).unwrap_err().to_string();
        assert!(e.contains("e.csv") && e.contains("empty"), "{e}");
        let e = Dataset::parse(b"text,label\nok,a\n\xff\xfe,b\n", "u.csv", false).unwrap_err().to_string();
        assert!(e.starts_with("u.csv:3:") && e.contains("UTF-8"), "{e}");
        let e = Dataset::parse(b"{\"text\":\"a\",\"label\":1}\n{\"text\":\"b\"}\n", "j.jsonl", false)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("j.jsonl:2:") && e.contains("label"), "{e}");
    }

    #[test]
    fn separators_extra_fields_and_broken_quotes() {
        // A semicolon export read as it is (it used to fail on "a quote inside an unquoted field").
        let ds =
            Dataset::parse("text;label\n\"good; really\";pos\nbad, sadly;neg\n".as_bytes(), "s.csv", false).unwrap();
        assert_eq!(ds.examples[0].text, "good; really");
        assert_eq!(ds.examples[1].text, "bad, sadly");
        let ds = Dataset::parse(b"text|label\na|x\nb|y\n", "p.csv", false).unwrap();
        assert_eq!(ds.labels(), ["x", "y"]);
        // A row with more fields than the header: its third field became the label, silently.
        let csv = "text,label\ngood,pos\n\"too\",\"many\",\"fields\"\nbad,neg\n";
        let e = Dataset::parse(csv.as_bytes(), "x.csv", false).unwrap_err().to_string();
        assert!(e.starts_with("x.csv:3:") && e.contains("3 fields where the header has 2"), "{e}");
        let ds = Dataset::parse(csv.as_bytes(), "x.csv", true).unwrap();
        assert_eq!(ds.labels(), ["neg", "pos"]);
        assert_eq!(ds.skipped[0].line, 3);
        // One unclosed quote rejected the whole file even with skipping: now only its row goes.
        let csv = "text,label\ngood,pos\n\"never closed,neg\nfine,pos\nbad,neg\n";
        let e = Dataset::parse(csv.as_bytes(), "q.csv", false).unwrap_err().to_string();
        assert!(e.starts_with("q.csv:3:") && e.contains("never closed") && e.contains("--skip-bad-rows"), "{e}");
        let ds = Dataset::parse(csv.as_bytes(), "q.csv", true).unwrap();
        let texts: Vec<&str> = ds.examples.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, ["good", "fine", "bad"]);
        assert_eq!(ds.skipped.iter().map(|b| b.line).collect::<Vec<_>>(), [3]);
        // A stray quote mid-field: that row is skipped, the next ones read.
        let ds = Dataset::parse(b"text,label\nsa\"y,pos\nok,neg\nfine,pos\n", "r.csv", true).unwrap();
        assert_eq!(ds.examples.len(), 2);
        assert_eq!(ds.skipped[0].line, 2);
        // The page names its checkbox, not the command line's flag.
        let e =
            Dataset::parse_with_hint(b"text,label\n\"x,pos\n", "p.csv", false, "tick the box").unwrap_err().to_string();
        assert!(e.contains("(tick the box)") && !e.contains("--skip"), "{e}");
    }

    #[test]
    fn jsonl_and_arrays() {
        let ds =
            Dataset::parse(b"{\"text\":\"a\",\"label\":1}\n\n{\"text\":\"b\",\"label\":\"x\"}\n", "d.jsonl", false)
                .unwrap();
        assert_eq!(ds.examples[0].label, "1");
        assert_eq!(ds.examples[1].line, 3);
        let ds =
            Dataset::parse(b"[{\"text\":\"a\",\"class\":0},{\"text\":\"\",\"class\":null}]", "d.json", true).unwrap();
        assert_eq!(ds.examples.len(), 1);
        assert_eq!(ds.skipped.len(), 1);
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let rows: String = (0..100).map(|i| format!("{{\"text\":\"t{i}\",\"label\":\"{}\"}}\n", i % 2)).collect();
        let ds = Dataset::parse(rows.as_bytes(), "d.jsonl", false).unwrap();
        let (a, b) = ds.split(0.2, 7).unwrap();
        let (a2, b2) = ds.split(0.2, 7).unwrap();
        assert_eq!((a.examples.len(), b.examples.len()), (80, 20));
        assert_eq!(b.examples, b2.examples);
        assert_eq!(a.examples, a2.examples);
        let (_, b3) = ds.split(0.2, 8).unwrap();
        assert_ne!(b.examples, b3.examples);
        assert!(b.examples.iter().all(|e| !a.examples.contains(e)));
        let e = ds.label_ids(&["0".to_string()]).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:2") && e.contains("label `1` was not seen in training"), "{e}");
    }
}

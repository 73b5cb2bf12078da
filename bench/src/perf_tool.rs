//! Pieces of `millrace-bench produce` / `consume` that follow Kafka's perf tools
//! (`kafka-producer-perf-test`, `kafka-consumer-perf-test`) so that their invocations carry over:
//! client properties files, the payload delimiter and the consumer tool's date format.

/// Java's white space in a properties file: space, tab, form feed.
const BLANK: [char; 3] = [' ', '\t', '\x0c'];

/// The `key=value` pairs of a Java properties file (what `--producer.config` and
/// `--consumer.config` name), in file order: `key=value`, `key: value` or `key value`, blank
/// lines and lines starting with `#` or `!` skipped, a line ending in an odd number of
/// backslashes continued on the next, `\t`, `\n`, `\r`, `\f` and `\<c>` unescaped. Lines
/// end at `\n`, `\r\n` or `\r`. Unicode escapes (`\uXXXX`) are not supported and are an
/// error.
pub fn parse_properties(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut lines = text.split('\n').enumerate();
    while let Some((no, line)) = lines.next() {
        let mut logical = line.trim_start_matches(BLANK).to_string();
        if logical.is_empty() || logical.starts_with('#') || logical.starts_with('!') {
            continue;
        }
        while ends_in_continuation(&logical) {
            logical.pop();
            match lines.next() {
                Some((_, next)) => logical.push_str(next.trim_start_matches(BLANK)),
                None => break,
            }
        }
        let (key, value) = split_key_value(&logical);
        let key = unescape(key).map_err(|e| format!("line {}: {e}", no + 1))?;
        let value = unescape(value).map_err(|e| format!("line {}: {e}", no + 1))?;
        out.push((key, value));
    }
    Ok(out)
}

fn ends_in_continuation(s: &str) -> bool {
    s.bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 1
}

/// Splits a logical line at its first unescaped `=`, `:` or whitespace (whitespace around the
/// separator is part of it).
fn split_key_value(line: &str) -> (&str, &str) {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'=' | b':' | b' ' | b'\t' | b'\x0c' => break,
            _ => i += 1,
        }
    }
    let i = i.min(bytes.len());
    let key = &line[..i];
    let mut rest = line[i..].trim_start_matches(BLANK);
    if let Some(r) = rest.strip_prefix(['=', ':']) {
        rest = r.trim_start_matches(BLANK);
    }
    (key, rest)
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\x0c'),
            Some('u') => return Err("unicode escapes (\\uXXXX) are not supported".into()),
            Some(other) => out.push(other),
            None => {}
        }
    }
    Ok(out)
}

/// `--payload-delimiter` as typed: `\n`, `\r`, `\t` and `\\` stand for the characters (so that
/// the default, and a `'\n'` typed in a shell, mean a new line, as with Kafka's tool, which
/// reads the delimiter as a Java regular expression). Anything else is taken literally.
pub fn unescape_delimiter(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some('n')) => out.push('\n'),
            ('\\', Some('r')) => out.push('\r'),
            ('\\', Some('t')) => out.push('\t'),
            ('\\', Some('\\')) => out.push('\\'),
            _ => {
                out.push(c);
                continue;
            }
        }
        chars.next();
    }
    out
}

/// The payloads of a `--payload-file`: its bytes split at every `delimiter`, trailing empty
/// pieces dropped (as Java's `String.split`, which Kafka's tool used; its `Scanner` since
/// differs only in empty pieces at the file's ends).
pub fn split_payloads(data: &[u8], delimiter: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    if delimiter.is_empty() {
        out.extend(data.iter().map(|&b| vec![b]));
        return out;
    }
    let mut start = 0;
    let mut i = 0;
    while i + delimiter.len() <= data.len() {
        if &data[i..i + delimiter.len()] == delimiter {
            out.push(data[start..i].to_vec());
            i += delimiter.len();
            start = i;
        } else {
            i += 1;
        }
    }
    out.push(data[start..].to_vec());
    while out.last().is_some_and(|p| p.is_empty()) {
        out.pop();
    }
    out
}

/// A date pattern in the letters of Java's `SimpleDateFormat` that the consumer tool's
/// `--date-format` takes (default `yyyy-MM-dd HH:mm:ss:SSS`): `y`, `M` (numeric), `d`, `H`,
/// `h`, `m`, `s`, `S`, `a`, text in single quotes, `''` for a quote (inside quotes or out) and
/// any other non-letter as itself. Month names (`MMM`) are refused.
#[derive(Debug, Clone)]
pub struct DateFormat(Vec<Piece>);

#[derive(Debug, Clone)]
enum Piece {
    Field(char, usize),
    Text(String),
}

/// The calendar fields a [`DateFormat`] prints.
#[derive(Debug, Clone, Copy)]
pub struct DateTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
}

impl DateFormat {
    pub fn parse(pattern: &str) -> Result<DateFormat, String> {
        let mut pieces = Vec::new();
        let chars: Vec<char> = pattern.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '\'' && chars.get(i + 1) == Some(&'\'') {
                pieces.push(Piece::Text("'".into()));
                i += 2;
            } else if c == '\'' {
                let mut text = String::new();
                i += 1;
                loop {
                    match (chars.get(i), chars.get(i + 1)) {
                        (Some('\''), Some('\'')) => {
                            text.push('\'');
                            i += 2;
                        }
                        (Some('\''), _) => {
                            i += 1;
                            break;
                        }
                        (Some(&ch), _) => {
                            text.push(ch);
                            i += 1;
                        }
                        (None, _) => return Err(format!("unterminated quote in {pattern:?}")),
                    }
                }
                pieces.push(Piece::Text(text));
            } else if c.is_ascii_alphabetic() {
                if !"yMdHhmsSa".contains(c) {
                    return Err(format!("unsupported date pattern letter {c:?} in {pattern:?}"));
                }
                let n = chars[i..].iter().take_while(|&&x| x == c).count();
                if c == 'M' && n >= 3 {
                    return Err(format!("month names (MMM) are not supported in {pattern:?}"));
                }
                pieces.push(Piece::Field(c, n));
                i += n;
            } else {
                pieces.push(Piece::Text(c.to_string()));
                i += 1;
            }
        }
        Ok(DateFormat(pieces))
    }

    pub fn format(&self, t: &DateTime) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(s) => out.push_str(s),
                Piece::Field(c, n) => {
                    let n = *n;
                    let v: i64 = match c {
                        // `yy` is the year's last two digits; other counts the whole year.
                        'y' if n == 2 => t.year.rem_euclid(100),
                        'y' => t.year,
                        'M' => t.month.into(),
                        'd' => t.day.into(),
                        'H' => t.hour.into(),
                        'h' => ((t.hour + 11) % 12 + 1).into(),
                        'm' => t.minute.into(),
                        's' => t.second.into(),
                        'S' => t.millis.into(),
                        _ => {
                            out.push_str(if t.hour < 12 { "AM" } else { "PM" });
                            continue;
                        }
                    };
                    out.push_str(&format!("{v:0n$}"));
                }
            }
        }
        out
    }
}

/// One of librdkafka's rolling statistics windows (`statistics.interval.ms` long), as
/// `--print-metrics` keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub cnt: i64,
    pub avg: i64,
    pub p99: i64,
    pub max: i64,
}

/// A metric's windows over a run.
#[derive(Debug, Default, Clone)]
pub struct WindowSeries(Vec<Window>);

/// A run's view of a [`WindowSeries`]: librdkafka keeps percentiles per window only, so the
/// 99th percentile is given for the median window and for the worst one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeriesSummary {
    pub count: i64,
    /// Mean over every value of every window.
    pub avg: f64,
    pub p99_median_window: i64,
    pub p99_worst_window: i64,
    pub max: i64,
}

impl WindowSeries {
    /// Keeps `w` if it saw any value.
    pub fn add(&mut self, w: Window) {
        if w.cnt > 0 {
            self.0.push(w);
        }
    }

    pub fn summary(&self) -> Option<SeriesSummary> {
        if self.0.is_empty() {
            return None;
        }
        let count: i64 = self.0.iter().map(|w| w.cnt).sum();
        let sum: f64 = self.0.iter().map(|w| w.avg as f64 * w.cnt as f64).sum();
        let mut p99: Vec<i64> = self.0.iter().map(|w| w.p99).collect();
        p99.sort_unstable();
        Some(SeriesSummary {
            count,
            avg: sum / count as f64,
            p99_median_window: p99[p99.len() / 2],
            p99_worst_window: p99[p99.len() - 1],
            max: self.0.iter().map(|w| w.max).max().unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_files_read_as_java_reads_them() {
        let text = "# a comment\n! another\n\nbootstrap.servers=127.0.0.1:9092\n  acks : all\n\
                    linger.ms 5\nclient.id=a\\=b\nlong=one,\\\n    two\nempty=\nsasl.jaas.config=x y z\n";
        let p = parse_properties(text).unwrap();
        let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            p,
            [
                ("bootstrap.servers", "127.0.0.1:9092"),
                ("acks", "all"),
                ("linger.ms", "5"),
                ("client.id", "a=b"),
                ("long", "one,two"),
                ("empty", ""),
                ("sasl.jaas.config", "x y z"),
            ]
        );
        assert!(parse_properties("k=\\u0041").is_err());
        let p = parse_properties("a=1\rb=2\r\nc=3").unwrap();
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn payloads_split_as_java_split_does() {
        assert_eq!(unescape_delimiter("\\n"), "\n");
        assert_eq!(unescape_delimiter("\n"), "\n");
        assert_eq!(unescape_delimiter("||"), "||");
        assert_eq!(unescape_delimiter("a\\\\b\\t"), "a\\b\t");
        let p = split_payloads(b"one\ntwo\n\nthree\n\n", b"\n");
        assert_eq!(p, [&b"one"[..], b"two", b"", b"three"]);
        assert_eq!(split_payloads(b"a||b", b"||"), [&b"a"[..], b"b"]);
        assert!(split_payloads(b"\n\n", b"\n").is_empty());
    }

    #[test]
    fn window_series_sum_up_a_run() {
        let mut s = WindowSeries::default();
        assert_eq!(s.summary(), None);
        s.add(Window { cnt: 0, avg: 0, p99: 0, max: 0 });
        s.add(Window { cnt: 100, avg: 10, p99: 20, max: 30 });
        s.add(Window { cnt: 300, avg: 30, p99: 90, max: 200 });
        s.add(Window { cnt: 100, avg: 10, p99: 25, max: 40 });
        let m = s.summary().unwrap();
        assert_eq!(m.count, 500);
        assert_eq!(m.avg, 22.0);
        assert_eq!((m.p99_median_window, m.p99_worst_window, m.max), (25, 90, 200));
    }

    #[test]
    fn the_consumer_tools_default_date_format() {
        let t =
            DateTime { year: 2026, month: 1, day: 5, hour: 13, minute: 4, second: 9, millis: 7 };
        let f = DateFormat::parse("yyyy-MM-dd HH:mm:ss:SSS").unwrap();
        assert_eq!(f.format(&t), "2026-01-05 13:04:09:007");
        let f = DateFormat::parse("yy/M/d h:mm a 'at' ''").unwrap();
        assert_eq!(f.format(&t), "26/1/5 1:04 PM at '");
        let f = DateFormat::parse("'''' 'o''clock' H").unwrap();
        assert_eq!(f.format(&t), "'' o'clock 13");
        assert!(DateFormat::parse("EEE").is_err());
        assert!(DateFormat::parse("dd MMM").is_err());
        assert!(DateFormat::parse("'open").is_err());
    }
}

//! One source, two outputs. Every object of the install is built once, as
//! JSON in which a configurable field holds a *placeholder* naming a value
//! (`identity.replicas`) instead of the value itself. [`render`] fills the
//! placeholders from a set of values: that is what `lanyard install`
//! prints. [`template`] turns them into Helm template actions (`{{ toJson
//! .Values.identity.replicas }}`): that is the chart's template. A test
//! renders the chart with Helm's own engine and checks both agree.
//!
//! The YAML both write is block style, keys in sorted order, with every
//! string JSON-quoted (JSON is YAML), so nothing in a value can change the
//! document's structure.

use serde_json::{Map, Value};

/// The release namespace: `.Release.Namespace` in the chart, `lanyard
/// install --namespace` outside it.
pub const RELEASE_NAMESPACE: &str = "Release.Namespace";

const OPEN: char = '\u{1}';
const CLOSE: char = '\u{2}';

/// A placeholder for the value at `path` (dotted, as in `--set`), or
/// [`RELEASE_NAMESPACE`].
pub fn v(path: &str) -> Value {
    Value::String(format!("{OPEN}{path}{CLOSE}"))
}

/// A string with placeholders inside it, e.g. `identity.{ns}.{domain}`:
/// `pieces` alternate literal text and value paths, starting with text.
pub fn interpolate(pieces: &[&str]) -> Value {
    let mut out = String::new();
    for (i, piece) in pieces.iter().enumerate() {
        if i % 2 == 0 {
            out.push_str(piece);
        } else {
            out.push(OPEN);
            out.push_str(piece);
            out.push(CLOSE);
        }
    }
    Value::String(out)
}

/// When a document is part of the install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// The value at this path is set: true, non-empty, non-zero.
    Set(&'static str),
    /// The value at this path is unset: false, empty, zero.
    Unset(&'static str),
}

impl Cond {
    fn holds(&self, values: &Value) -> Result<bool, RenderError> {
        Ok(match self {
            Cond::Set(path) => truthy(lookup(values, path)?),
            Cond::Unset(path) => !truthy(lookup(values, path)?),
        })
    }

    fn action(&self) -> String {
        match self {
            Cond::Set(path) => format!(".Values.{path}"),
            Cond::Unset(path) => format!("not .Values.{path}"),
        }
    }
}

/// Go templates' truth: false, 0, "", null, and empty lists and maps are
/// false.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A value a template asked for is missing, or cannot go where it was
/// asked for.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("no value `{0}`")]
    Missing(String),
    #[error("value `{0}` is a list or a map, and is used inside a string")]
    NotScalar(String),
}

fn lookup<'a>(values: &'a Value, path: &str) -> Result<&'a Value, RenderError> {
    path.split('.')
        .try_fold(values, |at, key| at.get(key))
        .ok_or_else(|| RenderError::Missing(path.to_string()))
}

/// The pieces of a string: literal text and value paths.
enum Piece<'a> {
    Text(&'a str),
    Value(&'a str),
}

fn pieces(s: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find(OPEN) {
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
        let after = &rest[start + OPEN.len_utf8()..];
        let end = after.find(CLOSE).expect("placeholders are closed");
        out.push(Piece::Value(&after[..end]));
        rest = &after[end + CLOSE.len_utf8()..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

/// Fills every placeholder in `object` from `values` (the namespace from
/// `namespace`).
pub fn fill(object: &Value, values: &Value, namespace: &str) -> Result<Value, RenderError> {
    let get = |path: &str| -> Result<Value, RenderError> {
        if path == RELEASE_NAMESPACE {
            Ok(Value::String(namespace.to_string()))
        } else {
            lookup(values, path).cloned()
        }
    };
    Ok(match object {
        Value::String(s) if s.contains(OPEN) => match pieces(s).as_slice() {
            [Piece::Value(path)] => get(path)?,
            parts => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Piece::Text(text) => out.push_str(text),
                        Piece::Value(path) => match get(path)? {
                            Value::String(s) => out.push_str(&s),
                            Value::Array(_) | Value::Object(_) => {
                                return Err(RenderError::NotScalar(path.to_string()));
                            }
                            other => out.push_str(&other.to_string()),
                        },
                    }
                }
                Value::String(out)
            }
        },
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| fill(item, values, namespace))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, item)| Ok((k.clone(), fill(item, values, namespace)?)))
                .collect::<Result<Map<_, _>, RenderError>>()?,
        ),
        other => other.clone(),
    })
}

/// One document of the install: an object, the chart's template file it
/// lives in, and when it is part of the install.
#[derive(Debug, Clone)]
pub struct Document {
    /// The template's file name under `templates/`.
    pub file: &'static str,
    /// When it is rendered; always when empty.
    pub when: Vec<Cond>,
    /// The object, with placeholders.
    pub object: Value,
}

impl Document {
    /// An object that is always part of the install.
    pub fn new(file: &'static str, object: Value) -> Self {
        Document {
            file,
            when: Vec::new(),
            object,
        }
    }

    /// Only when `cond` holds (as well as any earlier conditions).
    pub fn when(mut self, cond: Cond) -> Self {
        self.when.push(cond);
        self
    }

    /// The object filled from `values`, or `None` when it is not part of
    /// the install at these values.
    pub fn render(&self, values: &Value, namespace: &str) -> Result<Option<Value>, RenderError> {
        for cond in &self.when {
            if !cond.holds(values)? {
                return Ok(None);
            }
        }
        fill(&self.object, values, namespace).map(Some)
    }

    /// The chart's template file for this document.
    pub fn template(&self) -> String {
        let body = to_yaml(&self.object, &Emit::Template);
        match self.when.as_slice() {
            [] => body,
            [one] => format!("{{{{- if {} }}}}\n{body}{{{{- end }}}}\n", one.action()),
            many => {
                let all: Vec<String> = many.iter().map(|c| format!("({})", c.action())).collect();
                format!(
                    "{{{{- if and {} }}}}\n{body}{{{{- end }}}}\n",
                    all.join(" ")
                )
            }
        }
    }
}

/// How scalars are written.
enum Emit<'a> {
    /// Plain YAML: no placeholders may remain.
    Plain,
    /// A Helm template: placeholders become actions, and literal `{{`
    /// is escaped.
    Template,
    /// Plain YAML with a comment line before some keys (dotted paths).
    Commented(&'a dyn Fn(&str) -> Option<&'static str>),
}

/// `value` as block-style YAML (each string JSON-quoted).
pub fn yaml(value: &Value) -> String {
    to_yaml(value, &Emit::Plain)
}

/// `value` as block-style YAML, with a `# ...` comment above each key
/// `comment` knows (by dotted path).
pub fn yaml_commented(value: &Value, comment: &dyn Fn(&str) -> Option<&'static str>) -> String {
    to_yaml(value, &Emit::Commented(comment))
}

fn to_yaml(value: &Value, emit: &Emit) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0, "", emit),
        Value::Array(items) if !items.is_empty() => write_seq(&mut out, items, 0, "", emit),
        scalar => {
            out.push_str(&scalar_text(scalar, emit));
            out.push('\n');
        }
    }
    out
}

fn key_text(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && !key.starts_with(['-', '.'])
        && !matches!(
            key,
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        )
        && key.parse::<f64>().is_err();
    if plain {
        key.to_string()
    } else {
        serde_json::to_string(key).expect("strings serialise")
    }
}

fn scalar_text(value: &Value, emit: &Emit) -> String {
    match (value, emit) {
        (Value::String(s), Emit::Template) if s.contains(OPEN) => match pieces(s).as_slice() {
            [Piece::Value(path)] => format!("{{{{ toJson {} }}}}", action_path(path)),
            parts => {
                let mut format = String::new();
                let mut args = Vec::new();
                for part in parts {
                    match part {
                        Piece::Text(text) => format.push_str(&text.replace('%', "%%")),
                        Piece::Value(path) => {
                            format.push_str("%v");
                            args.push(action_path(path));
                        }
                    }
                }
                let format = serde_json::to_string(&format).expect("strings serialise");
                format!("{{{{ printf {format} {} | toJson }}}}", args.join(" "))
            }
        },
        (Value::String(s), _) => {
            assert!(
                !s.contains(OPEN),
                "a placeholder left in a rendered object: {s:?}"
            );
            let quoted = serde_json::to_string(s).expect("strings serialise");
            match emit {
                Emit::Template => quoted.replace("{{", "{{ \"{{\" }}"),
                _ => quoted,
            }
        }
        (Value::Object(_), _) => "{}".into(),
        (Value::Array(_), _) => "[]".into(),
        (other, _) => other.to_string(),
    }
}

fn action_path(path: &str) -> String {
    if path == RELEASE_NAMESPACE {
        format!(".{path}")
    } else {
        format!(".Values.{path}")
    }
}

fn is_block(value: &Value) -> bool {
    match value {
        Value::Object(map) => !map.is_empty(),
        Value::Array(items) => !items.is_empty(),
        _ => false,
    }
}

fn write_map(out: &mut String, map: &Map<String, Value>, indent: usize, path: &str, emit: &Emit) {
    let pad = " ".repeat(indent);
    for (key, value) in map {
        let here = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        if let Emit::Commented(comment) = emit
            && let Some(text) = comment(&here)
        {
            for line in text.lines() {
                out.push_str(&format!("{pad}# {line}\n"));
            }
        }
        let key = key_text(key);
        match value {
            Value::Object(inner) if !inner.is_empty() => {
                out.push_str(&format!("{pad}{key}:\n"));
                write_map(out, inner, indent + 2, &here, emit);
            }
            Value::Array(items) if !items.is_empty() => {
                out.push_str(&format!("{pad}{key}:\n"));
                write_seq(out, items, indent, &here, emit);
            }
            scalar => out.push_str(&format!("{pad}{key}: {}\n", scalar_text(scalar, emit))),
        }
    }
}

fn write_seq(out: &mut String, items: &[Value], indent: usize, path: &str, emit: &Emit) {
    let pad = " ".repeat(indent);
    for item in items {
        if is_block(item) {
            let mut inner = String::new();
            match item {
                Value::Object(map) => write_map(&mut inner, map, indent + 2, path, emit),
                Value::Array(items) => write_seq(&mut inner, items, indent + 2, path, emit),
                _ => unreachable!("is_block"),
            }
            // The item's first line starts after the dash.
            out.push_str(&pad);
            out.push_str("- ");
            out.push_str(&inner[indent + 2..]);
        } else {
            out.push_str(&format!("{pad}- {}\n", scalar_text(item, emit)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_placeholder_is_filled_with_its_value_of_any_type() {
        let values = json!({"a": {"n": 2, "s": "x", "m": {"k": "v"}}});
        let object = json!({
            "n": v("a.n"),
            "m": v("a.m"),
            "s": interpolate(&["pre-", "a.s", "-", "a.n"]),
            "ns": v(RELEASE_NAMESPACE),
        });
        assert_eq!(
            fill(&object, &values, "linkerd").unwrap(),
            json!({"n": 2, "m": {"k": "v"}, "s": "pre-x-2", "ns": "linkerd"})
        );
        assert_eq!(
            fill(&json!({"x": v("a.missing")}), &values, "ns"),
            Err(RenderError::Missing("a.missing".into()))
        );
        assert_eq!(
            fill(&json!({"x": interpolate(&["", "a.m", "!"])}), &values, "ns"),
            Err(RenderError::NotScalar("a.m".into()))
        );
    }

    #[test]
    fn a_template_turns_placeholders_into_actions_and_escapes_literal_braces() {
        let doc = Document::new(
            "x.yaml",
            json!({
                "kind": "K",
                "spec": {
                    "replicas": v("a.n"),
                    "image": interpolate(&["", "image.repository", ":", "image.tag"]),
                    "note": "{{ $labels.pod }} at 5%",
                    "list": [{"name": "one", "port": 1}, "two"],
                    "empty": {},
                },
            }),
        )
        .when(Cond::Set("metrics.enabled"));
        assert_eq!(
            doc.template(),
            "{{- if .Values.metrics.enabled }}\n\
             kind: \"K\"\n\
             spec:\n  \
               empty: {}\n  \
               image: {{ printf \"%v:%v\" .Values.image.repository .Values.image.tag | toJson }}\n  \
               list:\n  \
               - name: \"one\"\n    \
                 port: 1\n  \
               - \"two\"\n  \
               note: \"{{ \"{{\" }} $labels.pod }} at 5%\"\n  \
               replicas: {{ toJson .Values.a.n }}\n\
             {{- end }}\n"
        );
    }

    #[test]
    fn conditions_follow_go_templates_truth() {
        let doc = Document::new("x.yaml", json!({"a": 1})).when(Cond::Unset("pem"));
        assert!(doc.render(&json!({"pem": ""}), "ns").unwrap().is_some());
        assert!(doc.render(&json!({"pem": "x"}), "ns").unwrap().is_none());
        let doc = Document::new("x.yaml", json!({"a": 1})).when(Cond::Set("on"));
        assert!(doc.render(&json!({"on": false}), "ns").unwrap().is_none());
        assert!(doc.render(&json!({"on": true}), "ns").unwrap().is_some());
    }

    #[test]
    fn keys_that_yaml_would_misread_are_quoted() {
        assert_eq!(key_text("app.kubernetes.io/name"), "app.kubernetes.io/name");
        assert_eq!(key_text("ca.crt"), "ca.crt");
        assert_eq!(key_text("on"), "\"on\"");
        assert_eq!(key_text("1"), "\"1\"");
        assert_eq!(key_text("a b"), "\"a b\"");
    }
}

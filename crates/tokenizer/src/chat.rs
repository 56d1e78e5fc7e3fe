//! Chat templates: a model's Jinja template rendered with minijinja the way `transformers`
//! renders it with jinja2 (trim_blocks, lstrip_blocks, loop controls, Python string methods,
//! a `tojson` that prints like Python's `json.dumps`, `raise_exception`, `strftime_now`).

use anyhow::{bail, Context, Result};
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;
use std::path::Path;

/// One chat message (role: system / user / assistant / tool).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message { role: role.into(), content: content.into() }
    }
}

/// A chat template and the BOS/EOS strings it may print.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Self {
        ChatTemplate { source: source.into(), bos_token: bos_token.into(), eos_token: eos_token.into() }
    }

    /// From a model directory's `tokenizer_config.json` (`chat_template`, `bos_token`,
    /// `eos_token`), or a separate `chat_template.jinja` there.
    pub fn from_tokenizer_config(dir: &Path) -> Result<Self> {
        let p = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if p.exists() {
            serde_json::from_str(&std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?)
                .with_context(|| format!("{}: not valid JSON", p.display()))?
        } else {
            serde_json::Value::Null
        };
        let tok = |k: &str| -> String {
            let t = &cfg[k];
            t.as_str().or_else(|| t.get("content").and_then(|c| c.as_str())).unwrap_or("").to_string()
        };
        let source = match &cfg["chat_template"] {
            serde_json::Value::String(s) => s.clone(),
            // A list of named templates: take "default".
            serde_json::Value::Array(a) => a
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .map(str::to_string)
                .with_context(|| format!("{}: chat_template list has no \"default\"", p.display()))?,
            serde_json::Value::Null => {
                let j = dir.join("chat_template.jinja");
                std::fs::read_to_string(&j)
                    .with_context(|| format!("{}: no chat_template, and no {}", p.display(), j.display()))?
            }
            other => bail!(
                "{}: chat_template is {}, not a template string or a list of named templates",
                p.display(),
                match other {
                    serde_json::Value::Bool(_) => "a boolean",
                    serde_json::Value::Number(_) => "a number",
                    _ => "an object",
                }
            ),
        };
        ChatTemplate { source, bos_token: tok("bos_token"), eos_token: tok("eos_token") }.parsed(&p)
    }

    /// `self` once its source parses: a syntax error names the file it came from here, not
    /// later (and without it) at every render.
    fn parsed(self, from: &Path) -> Result<Self> {
        Environment::new()
            .add_template("chat_template", &self.source)
            .with_context(|| format!("{}: parsing the chat template", from.display()))?;
        Ok(self)
    }

    /// From a GGUF file's `tokenizer.chat_template` (BOS/EOS strings from its vocabulary).
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let g = smelt_gguf::GgufFile::open(path)?;
        let source = g
            .get_str("tokenizer.chat_template")
            .with_context(|| format!("{}: no tokenizer.chat_template", path.display()))?
            .to_string();
        let tokens = g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array());
        let tok = |k: &str| -> String {
            let id = g.get(k).and_then(|v| v.as_u64());
            id.and_then(|i| tokens?.get(i as usize)?.as_str().map(str::to_string)).unwrap_or_default()
        };
        ChatTemplate {
            source,
            bos_token: tok("tokenizer.ggml.bos_token_id"),
            eos_token: tok("tokenizer.ggml.eos_token_id"),
        }
        .parsed(path)
    }

    /// Render a conversation.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with(&serde_json::to_value(messages)?, add_generation_prompt, &serde_json::Value::Null)
    }

    /// Render with messages as JSON (tool calls etc. pass through) and extra context variables
    /// (`tools`, `date_string`, ...).
    pub fn render_with(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        extra: &serde_json::Value,
    ) -> Result<String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
        env.add_template("chat_template", &self.source).context("parsing the chat template")?;
        let mut ctx = serde_json::Map::new();
        if let serde_json::Value::Object(m) = extra {
            ctx.extend(m.clone());
        }
        ctx.insert("messages".into(), messages.clone());
        ctx.insert("add_generation_prompt".into(), add_generation_prompt.into());
        ctx.insert("bos_token".into(), self.bos_token.clone().into());
        ctx.insert("eos_token".into(), self.eos_token.clone().into());
        let tmpl = env.get_template("chat_template")?;
        match tmpl.render(Value::from_serialize(&ctx)) {
            Ok(s) => Ok(s),
            Err(e) => bail!("rendering the chat template: {e:#}"),
        }
    }
}

/// Python's `json.dumps(x, ensure_ascii=False, indent=indent)`: ", " and ": " separators
/// (",", ": " with an indent), keys in insertion order.
fn tojson(v: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    dump(&v, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn dump(v: &Value, indent: Option<usize>, level: usize, out: &mut String) -> Result<(), Error> {
    let nl = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Ok(i) = i64::try_from(v.clone()) {
                out.push_str(&i.to_string())
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                // Python prints 1.0, not 1.
                if f.fract() == 0.0 && f.abs() < 1e16 {
                    out.push_str(&format!("{f:.1}"))
                } else {
                    out.push_str(&f.to_string())
                }
            }
        }
        ValueKind::String => out.push_str(&serde_json::to_string(v.as_str().unwrap_or("")).unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                nl(out, level + 1);
                dump(x, indent, level + 1, out)?;
            }
            nl(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                nl(out, level + 1);
                out.push_str(&serde_json::to_string(&k.to_string()).unwrap_or_default());
                out.push_str(": ");
                dump(&v.get_item(k)?, indent, level + 1, out)?;
            }
            nl(out, level);
            out.push('}');
        }
        _ => out.push_str(&serde_json::to_string(&v.to_string()).unwrap_or_default()),
    }
    Ok(())
}

/// The current UTC time formatted with the common strftime codes (%d %m %Y %y %b %B %H %M %S %%).
fn strftime_now(fmt: &str) -> Result<String, Error> {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: unsupported code %{}", other.unwrap_or(' ')),
                ))
            }
        }
    }
    Ok(out)
}

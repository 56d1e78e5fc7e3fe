//! Chat templates from llama.cpp's models/templates/ rendered by smelt (minijinja) must equal
//! jinja2's rendering as `transformers` sets it up (goldens from
//! scripts/make_tokenizer_goldens.py). A conversation jinja2 refuses must fail here too.

mod common;
use smelt_tokenizer::{ChatTemplate, Message};

#[test]
fn templates_render_like_jinja2() {
    let Some(dir) = common::input("llama.cpp/models/templates") else { return };
    let p = common::repo_root().join("crates/tokenizer/tests/golden/chat.json");
    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let mut fails = Vec::new();
    let mut n = 0;
    for t in golden.as_array().unwrap() {
        let name = t["template"].as_str().unwrap();
        let ct = if let Some(model) = name.strip_suffix("/tokenizer_config.json") {
            let Some(d) = common::input(model) else { continue };
            let ct = ChatTemplate::from_tokenizer_config(&d).unwrap();
            assert_eq!(
                (ct.bos_token.as_str(), ct.eos_token.as_str()),
                (t["bos_token"].as_str().unwrap(), t["eos_token"].as_str().unwrap())
            );
            ct
        } else {
            let src = std::fs::read_to_string(dir.join(name)).unwrap();
            ChatTemplate::new(&src, t["bos_token"].as_str().unwrap(), t["eos_token"].as_str().unwrap())
        };
        for c in t["cases"].as_array().unwrap() {
            n += 1;
            let mut extra = t["extra"].clone();
            if !c["tools"].is_null() {
                extra["tools"] = c["tools"].clone();
            }
            let got = ct.render_with(&c["messages"], c["add_generation_prompt"].as_bool().unwrap(), &extra);
            match (c["output"].as_str(), got) {
                (Some(exp), Ok(got)) if exp == got => {}
                (None, Err(_)) => {}
                (exp, got) => fails.push(format!("{name}:\n  jinja2: {exp:?}\n  smelt:  {got:?}")),
            }
        }
    }
    println!("chat templates: {}/{n} renderings match jinja2", n - fails.len());
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

#[test]
fn simple_template_and_errors() {
    let ct = ChatTemplate::new(
        "{% for m in messages %}{{ m.role }}: {{ m.content.strip() }}{% if not loop.last %}{{ '\\n' }}{% endif %}{% endfor %}\
         {% if add_generation_prompt %}{{ '\\nassistant:' }}{% endif %}", "<s>", "</s>");
    let out = ct.render(&[Message::new("user", " hi "), Message::new("assistant", "yo")], true).unwrap();
    assert_eq!(out, "user: hi\nassistant: yo\nassistant:");
    let bad = ChatTemplate::new("{{ raise_exception('nope') }}", "", "");
    assert!(format!("{:#}", bad.render(&[], false).unwrap_err()).contains("nope"));
    // A template that does not parse is refused where it is read, naming the file.
    let dir = std::env::temp_dir().join(format!("smelt-bad-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"chat_template": "{% for m in messages %}{{ m.content "}"#)
        .unwrap();
    let e = format!("{:#}", ChatTemplate::from_tokenizer_config(&dir).unwrap_err());
    assert!(e.contains("tokenizer_config.json: parsing the chat template") && e.contains("syntax error"), "{e}");
    // A chat_template that is neither a string nor a list is named as such, not "no chat_template".
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"chat_template": 5}"#).unwrap();
    let e = format!("{:#}", ChatTemplate::from_tokenizer_config(&dir).unwrap_err());
    assert!(e.contains("tokenizer_config.json: chat_template is a number"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
    let js = ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}", "", "");
    let out = js
        .render_with(&serde_json::json!([]), false, &serde_json::json!({"x": {"a": [1, 2.5, "é"], "b": null}}))
        .unwrap();
    assert_eq!(
        out,
        "{\"a\": [1, 2.5, \"é\"], \"b\": null}|{\n  \"a\": [\n    1,\n    2.5,\n    \"é\"\n  ],\n  \"b\": null\n}"
    );
}

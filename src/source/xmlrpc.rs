//! XML-RPC (the wire format of Odin / Parallels Operations Automation's OpenAPI), encoded
//! and decoded with quick-xml: proper escaping, `i4`/`int`, nested structs and arrays.

use std::collections::BTreeMap;

use quick_xml::Reader;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};

/// Deepest nesting accepted in a response.
const MAX_DEPTH: usize = 64;

/// An XML-RPC value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Bool(bool),
    Str(String),
    Double(f64),
    Struct(BTreeMap<String, Value>),
    Array(Vec<Value>),
    Nil,
    /// `base64` and `dateTime.iso8601`, kept as text.
    Text(String),
}

impl Value {
    pub fn member(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Struct(m) => m.get(name),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::Text(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

/// A `<fault>` answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub code: i64,
    pub message: String,
}

/// `<methodCall>` for `method` with `params`.
pub fn method_call(method: &str, params: &[Value]) -> Vec<u8> {
    let mut w = quick_xml::Writer::new(Vec::new());
    let _ = w.write_event(Event::Decl(quick_xml::events::BytesDecl::new(
        "1.0",
        Some("UTF-8"),
        None,
    )));
    open(&mut w, "methodCall");
    text_element(&mut w, "methodName", method);
    open(&mut w, "params");
    for p in params {
        open(&mut w, "param");
        write_value(&mut w, p);
        close(&mut w, "param");
    }
    close(&mut w, "params");
    close(&mut w, "methodCall");
    w.into_inner()
}

fn open(w: &mut quick_xml::Writer<Vec<u8>>, name: &str) {
    let _ = w.write_event(Event::Start(BytesStart::new(name)));
}

fn close(w: &mut quick_xml::Writer<Vec<u8>>, name: &str) {
    let _ = w.write_event(Event::End(BytesEnd::new(name)));
}

fn text_element(w: &mut quick_xml::Writer<Vec<u8>>, name: &str, text: &str) {
    open(w, name);
    let _ = w.write_event(Event::Text(BytesText::new(text)));
    close(w, name);
}

fn write_value(w: &mut quick_xml::Writer<Vec<u8>>, v: &Value) {
    open(w, "value");
    match v {
        Value::Int(i) if i32::try_from(*i).is_ok() => text_element(w, "i4", &i.to_string()),
        Value::Int(i) => text_element(w, "i8", &i.to_string()),
        Value::Bool(b) => text_element(w, "boolean", if *b { "1" } else { "0" }),
        Value::Str(s) => text_element(w, "string", s),
        Value::Text(s) => text_element(w, "string", s),
        Value::Double(d) => text_element(w, "double", &d.to_string()),
        Value::Nil => {
            let _ = w.write_event(Event::Empty(BytesStart::new("nil")));
        }
        Value::Struct(members) => {
            open(w, "struct");
            for (name, value) in members {
                open(w, "member");
                text_element(w, "name", name);
                write_value(w, value);
                close(w, "member");
            }
            close(w, "struct");
        }
        Value::Array(items) => {
            open(w, "array");
            open(w, "data");
            for item in items {
                write_value(w, item);
            }
            close(w, "data");
            close(w, "array");
        }
    }
    close(w, "value");
}

/// A parsed element: name, child elements, and its text.
#[derive(Debug, Default)]
struct Element {
    name: String,
    children: Vec<Element>,
    text: String,
}

impl Element {
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }
}

fn parse_document(xml: &str) -> Result<Element, String> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().expand_empty_elements = true;
    let mut stack: Vec<Element> = vec![Element::default()];
    loop {
        match reader
            .read_event()
            .map_err(|e| format!("malformed XML: {e}"))?
        {
            Event::Start(start) => {
                if stack.len() > MAX_DEPTH {
                    return Err("XML nested too deeply".into());
                }
                let name = start.local_name().as_ref().to_owned();
                stack.push(Element {
                    name,
                    ..Default::default()
                });
            }
            Event::End(_) => {
                let done = stack.pop().ok_or("unbalanced XML")?;
                stack
                    .last_mut()
                    .ok_or("unbalanced XML")?
                    .children
                    .push(done);
            }
            Event::Text(t) => push_text(&mut stack, &t.xml10_content()),
            Event::CData(c) => push_text(&mut stack, &c.into_inner()),
            Event::GeneralRef(r) => {
                let resolved = match r
                    .resolve_char_ref()
                    .map_err(|e| format!("bad character reference: {e}"))?
                {
                    Some(c) => c.to_string(),
                    None => match r.xml10_content().as_ref() {
                        "amp" => "&".into(),
                        "lt" => "<".into(),
                        "gt" => ">".into(),
                        "quot" => "\"".into(),
                        "apos" => "'".into(),
                        other => return Err(format!("unknown entity `&{other};`")),
                    },
                };
                push_text(&mut stack, &resolved);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let mut root = stack
        .pop()
        .filter(|_| stack.is_empty())
        .ok_or("unbalanced XML")?;
    root.children
        .pop()
        .ok_or_else(|| "empty document".to_owned())
}

fn push_text(stack: &mut [Element], text: &str) {
    if let Some(top) = stack.last_mut() {
        top.text.push_str(text);
    }
}

fn value_of(v: &Element) -> Result<Value, String> {
    let Some(typed) = v.children.first() else {
        return Ok(Value::Str(v.text.clone())); // untyped value = string
    };
    let text = typed.text.trim();
    Ok(match typed.name.as_str() {
        "i4" | "int" | "i8" => Value::Int(
            text.parse()
                .map_err(|_| format!("`{text}` is not an integer"))?,
        ),
        "boolean" => Value::Bool(match text {
            "1" => true,
            "0" => false,
            _ => return Err(format!("`{text}` is not a boolean")),
        }),
        "string" => Value::Str(typed.text.clone()),
        "double" => Value::Double(
            text.parse()
                .map_err(|_| format!("`{text}` is not a double"))?,
        ),
        "nil" => Value::Nil,
        "base64" | "dateTime.iso8601" => Value::Text(text.to_owned()),
        "struct" => {
            let mut members = BTreeMap::new();
            for m in typed.children.iter().filter(|c| c.name == "member") {
                let name = m
                    .child("name")
                    .ok_or("struct member without a name")?
                    .text
                    .clone();
                let value = m.child("value").ok_or("struct member without a value")?;
                members.insert(name, value_of(value)?);
            }
            Value::Struct(members)
        }
        "array" => {
            let data = typed.child("data").ok_or("array without data")?;
            Value::Array(
                data.children
                    .iter()
                    .filter(|c| c.name == "value")
                    .map(value_of)
                    .collect::<Result<_, _>>()?,
            )
        }
        other => return Err(format!("unknown XML-RPC type `{other}`")),
    })
}

/// Parses a `<methodResponse>`: the value of its single param, or its fault.
pub fn parse_response(xml: &str) -> Result<Result<Value, Fault>, String> {
    let root = parse_document(xml)?;
    if root.name != "methodResponse" {
        return Err(format!("expected <methodResponse>, found <{}>", root.name));
    }
    if let Some(fault) = root.child("fault") {
        let v = value_of(fault.child("value").ok_or("fault without a value")?)?;
        let code = v.member("faultCode").and_then(Value::as_int).unwrap_or(0);
        let message = v
            .member("faultString")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        return Ok(Err(Fault { code, message }));
    }
    let value = root
        .child("params")
        .and_then(|p| p.child("param"))
        .and_then(|p| p.child("value"))
        .ok_or("methodResponse without a param value")?;
    Ok(Ok(value_of(value)?))
}

/// Parses a `<methodCall>` into its method name and params (used by test servers).
pub fn parse_call(xml: &str) -> Result<(String, Vec<Value>), String> {
    let root = parse_document(xml)?;
    if root.name != "methodCall" {
        return Err(format!("expected <methodCall>, found <{}>", root.name));
    }
    let method = root
        .child("methodName")
        .ok_or("no methodName")?
        .text
        .trim()
        .to_owned();
    let params = match root.child("params") {
        Some(p) => p
            .children
            .iter()
            .filter(|c| c.name == "param")
            .map(|c| value_of(c.child("value").ok_or("param without a value")?))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok((method, params))
}

/// A `<methodResponse>` with one value (used by test servers).
pub fn method_response(value: &Value) -> Vec<u8> {
    let mut w = quick_xml::Writer::new(Vec::new());
    let _ = w.write_event(Event::Decl(quick_xml::events::BytesDecl::new(
        "1.0",
        Some("UTF-8"),
        None,
    )));
    open(&mut w, "methodResponse");
    open(&mut w, "params");
    open(&mut w, "param");
    write_value(&mut w, value);
    close(&mut w, "param");
    close(&mut w, "params");
    close(&mut w, "methodResponse");
    w.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strukt(pairs: &[(&str, Value)]) -> Value {
        Value::Struct(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn a_call_is_encoded_as_documented_and_round_trips() {
        let params = [strukt(&[
            ("account_id", Value::Int(1)),
            ("subscription_id", Value::Int(0)),
        ])];
        let xml = String::from_utf8(method_call("pem.APS.getAccountToken", &params)).unwrap();
        assert!(
            xml.contains("<methodName>pem.APS.getAccountToken</methodName>"),
            "{xml}"
        );
        assert!(
            xml.contains("<member><name>account_id</name><value><i4>1</i4></value></member>"),
            "{xml}"
        );
        assert_eq!(
            parse_call(&xml).unwrap(),
            ("pem.APS.getAccountToken".into(), params.to_vec())
        );
    }

    #[test]
    fn text_is_escaped_and_unescaped() {
        let tricky = Value::Str("a<b & \"c\" 'd' ]]> é".into());
        let xml = String::from_utf8(method_call("m", std::slice::from_ref(&tricky))).unwrap();
        assert!(xml.contains("a&lt;b &amp; "), "{xml}");
        assert_eq!(parse_call(&xml).unwrap().1, vec![tricky]);
    }

    #[test]
    fn responses_with_every_type_and_nesting() {
        let xml = r#"<?xml version="1.0"?>
<methodResponse><params><param><value><struct>
  <member><name>status</name><value><int>0</int></value></member>
  <member><name>result</name><value><struct>
    <member><name>aps_token</name><value><string>JEFFUy0x&amp;MjgtQ0</string></value></member>
    <member><name>controller_uri</name><value>https://mn:6308/</value></member>
    <member><name>flags</name><value><array><data><value><boolean>1</boolean></value><value><double>1.5</double></value><value><nil/></value></data></array></value></member>
  </struct></value></member>
</struct></value></param></params></methodResponse>"#;
        let v = parse_response(xml).unwrap().unwrap();
        assert_eq!(v.member("status").and_then(Value::as_int), Some(0));
        let result = v.member("result").unwrap();
        assert_eq!(
            result.member("aps_token").and_then(Value::as_str),
            Some("JEFFUy0x&MjgtQ0")
        );
        assert_eq!(
            result.member("controller_uri").and_then(Value::as_str),
            Some("https://mn:6308/")
        );
        assert_eq!(
            result.member("flags"),
            Some(&Value::Array(vec![
                Value::Bool(true),
                Value::Double(1.5),
                Value::Nil
            ]))
        );
    }

    #[test]
    fn faults_and_malformed_documents() {
        let fault = "<methodResponse><fault><value><struct><member><name>faultCode</name><value><int>4</int></value></member><member><name>faultString</name><value><string>Too many parameters</string></value></member></struct></value></fault></methodResponse>";
        assert_eq!(
            parse_response(fault).unwrap(),
            Err(Fault {
                code: 4,
                message: "Too many parameters".into()
            })
        );
        for (bad, want) in [
            ("<methodResponse><params>", "unbalanced"),
            ("<html>oops</html>", "expected <methodResponse>"),
            (
                "<methodResponse><params><param><value><i4>x</i4></value></param></params></methodResponse>",
                "not an integer",
            ),
            (
                "<methodResponse><params><param><value><blob>1</blob></value></param></params></methodResponse>",
                "unknown XML-RPC type",
            ),
            (
                "<methodResponse><params><param><value>&bogus;</value></param></params></methodResponse>",
                "unknown entity",
            ),
            ("", "empty document"),
        ] {
            let err = parse_response(bad).unwrap_err();
            assert!(err.contains(want), "{bad}: {err}");
        }
        let deep = format!("<methodResponse>{}</methodResponse>", "<a>".repeat(100));
        assert!(parse_response(&deep).unwrap_err().contains("too deeply"));
    }
}

//! The tools' arguments: their JSON Schemas, as plain as the clients that read
//! them need, and a parser that turns anything a client sends into either the
//! arguments or a refusal naming the field and what to send instead.
//!
//! rmcp's own `Parameters<T>` would answer a wrong argument with serde's words
//! (`invalid type: string "5000", expected u64`), which a model cannot act on;
//! so the tools take the raw JSON object and parse it here. The schemas are
//! generated from the types below and cleaned by [`plain_schema`]; a test
//! checks that every property they name is one the parser reads.

use rmcp::model::JsonObject;
use serde_json::Value;

use crate::relay::error::ApiError;
use crate::relay::exec::{DEFAULT_TIMEOUT, ExecParams, MAX_TIMEOUT, MIN_TIMEOUT};

/// Arguments of `remote_exec`.
#[derive(Debug, Clone, PartialEq, Eq, schemars::JsonSchema)]
pub struct RemoteExecArgs {
    /// The machine's session code exactly as the user gave it (AIC-XXXX-XXXX-XXXX; any case, dashes optional), or an alias of a machine linked to the account.
    pub code: String,
    /// Shell command to run with `sh -c` on the machine. It runs non-interactively (stdin is empty): use `-y`, `sudo -n`, `--no-pager` and the like.
    pub command: String,
    /// Absolute working directory on the machine. Default: the daemon's working directory.
    pub cwd: Option<String>,
    /// Kill the command after this many milliseconds: a whole number from 1000 to 3600000, default 300000. A value outside that range is refused.
    #[schemars(range(min = 1000, max = 3_600_000), extend("default" = 300_000))]
    pub timeout_ms: Option<u64>,
    /// A key of your choosing (e.g. a UUID) that makes a retry safe: the same call with the same key within 10 minutes returns the first call's result instead of running the command again.
    pub idempotency_key: Option<String>,
}

/// Arguments of `session_status`.
#[derive(Debug, Clone, PartialEq, Eq, schemars::JsonSchema)]
pub struct SessionStatusArgs {
    /// The machine's session code exactly as the user gave it (AIC-XXXX-XXXX-XXXX; any case, dashes optional), or an alias of a machine linked to the account.
    pub code: String,
}

impl RemoteExecArgs {
    /// The arguments in `args`, or a refusal that says which field is wrong and what to send.
    pub fn parse(args: &JsonObject) -> Result<Self, ApiError> {
        Ok(Self {
            code: required_string(args, "code", CODE_HINT)?,
            command: required_string(args, "command", "the shell text to run, e.g. \"uname -a\"")?,
            cwd: optional_string(args, "cwd", "an absolute directory on the machine, e.g. \"/var/log\"")?,
            timeout_ms: timeout_ms(args)?,
            idempotency_key: optional_string(args, "idempotency_key", "a key such as a UUID")?,
        })
    }
}

/// What `remote_exec` runs, as the REST exec takes it: never under a
/// pseudo-terminal (a tool's output goes to a model, not a screen). The
/// idempotency key is not part of it; take it out first where it matters.
impl From<RemoteExecArgs> for ExecParams {
    fn from(args: RemoteExecArgs) -> Self {
        Self { code: args.code, command: args.command, cwd: args.cwd, timeout_ms: args.timeout_ms, pty: false }
    }
}

impl SessionStatusArgs {
    /// The arguments in `args`, or a refusal that says which field is wrong and what to send.
    pub fn parse(args: &JsonObject) -> Result<Self, ApiError> {
        Ok(Self { code: required_string(args, "code", CODE_HINT)? })
    }
}

/// What a `code` looks like, for refusals.
pub(super) const CODE_HINT: &str =
    "the machine's session code as a string, e.g. \"AIC-7K3P-WX9M-RTBN\", or a linked machine's alias";

/// The JSON type of `value` in words.
pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn required_string(args: &JsonObject, field: &str, what: &str) -> Result<String, ApiError> {
    match args.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(ApiError::bad_request(format!("{field} is missing; send {what}."))),
        Some(other) => {
            Err(ApiError::bad_request(format!("{field} must be a string, not {}; send {what}.", kind(other))))
        }
    }
}

pub(super) fn optional_string(args: &JsonObject, field: &str, what: &str) -> Result<Option<String>, ApiError> {
    match args.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::bad_request(format!(
            "{field} must be a string, not {}; send {what}, or leave it out.",
            kind(other)
        ))),
    }
}

/// `timeout_ms`: absent, or a whole number of milliseconds in range, sent as
/// a JSON number or as a numeric string (some clients send every CLI value as
/// a string).
fn timeout_ms(args: &JsonObject) -> Result<Option<u64>, ApiError> {
    let range = (MIN_TIMEOUT.as_millis() as u64, MAX_TIMEOUT.as_millis() as u64);
    whole_in(args, "timeout_ms", range, DEFAULT_TIMEOUT.as_millis() as u64)
}

/// Field `field`: absent, or a whole number from `min` to `max`, sent as a
/// JSON number or a numeric string.
pub(super) fn whole_in(
    args: &JsonObject,
    field: &str,
    (min, max): (u64, u64),
    default: u64,
) -> Result<Option<u64>, ApiError> {
    let unit = if field.ends_with("_ms") { " of milliseconds" } else { "" };
    let refuse = |sent: &str| {
        ApiError::bad_request(format!(
            "{field} must be a whole number{unit} from {min} to {max} (default {default}); {sent}. \
Send e.g. \"{field}\": {default}, or leave it out."
        ))
    };
    let millis = match args.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => whole(n.as_u64(), n.as_f64()),
        Some(Value::String(s)) => match s.trim().parse::<serde_json::Number>() {
            Ok(n) => whole(n.as_u64(), n.as_f64()),
            Err(_) => return Err(refuse(&format!("{s:?} is not a number"))),
        },
        Some(other) => return Err(refuse(&format!("it was {}", kind(other)))),
    };
    let in_range = |ms: &u64| (min..=max).contains(ms);
    match millis {
        Some(ms) if in_range(&ms) => Ok(Some(ms)),
        Some(ms) => Err(refuse(&format!("{ms} is out of range"))),
        None => Err(refuse("it was negative or not whole")),
    }
}

/// A number that is a whole, non-negative count (`5000.0` counts).
fn whole(exact: Option<u64>, float: Option<f64>) -> Option<u64> {
    exact.or_else(|| float.filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64).map(|f| f as u64))
}

/// Formats JSON Schema 2020-12 defines; clients warn about any other.
const STANDARD_FORMATS: [&str; 19] = [
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Makes a generated schema plain for every client: no `format` that JSON
/// Schema 2020-12 does not define (schemars writes `uint64`), and no `null`
/// in the type of a property that is not required (an optional field is left
/// out, never sent as null; `["integer","null"]` makes some clients send
/// strings).
pub fn plain_schema(schema: &mut JsonObject) {
    if schema.get("format").and_then(Value::as_str).is_some_and(|f| !STANDARD_FORMATS.contains(&f)) {
        schema.remove("format");
    }
    let required: Vec<String> = match schema.get("required") {
        Some(Value::Array(names)) => names.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    };
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        for (name, property) in properties.iter_mut() {
            if let Value::Object(property) = property
                && !required.contains(name)
            {
                drop_null(property);
            }
        }
    }
    for value in schema.values_mut() {
        match value {
            Value::Object(inner) => plain_schema(inner),
            Value::Array(items) => items.iter_mut().filter_map(Value::as_object_mut).for_each(plain_schema),
            _ => {}
        }
    }
}

/// Removes `null` from a property's `type` (or its `anyOf`), and a `null` default.
fn drop_null(property: &mut JsonObject) {
    if let Some(Value::Array(types)) = property.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types.remove(0);
            property.insert("type".into(), only);
        }
    }
    if let Some(Value::Array(options)) = property.get_mut("anyOf") {
        options.retain(|o| o.get("type").is_none_or(|t| t != "null"));
        if options.len() == 1 {
            let Some(Value::Object(only)) = options.pop() else { return };
            property.remove("anyOf");
            for (k, v) in only {
                property.entry(k).or_insert(v);
            }
        }
    }
    if property.get("default") == Some(&Value::Null) {
        property.remove("default");
    }
}

/// The plain input schema of an argument type.
pub fn input_schema<T: schemars::JsonSchema + 'static>() -> std::sync::Arc<JsonObject> {
    let generated = rmcp::handler::server::common::schema_for_input::<T>().expect("argument types are objects");
    let mut schema = (*generated).clone();
    plain_schema(&mut schema);
    std::sync::Arc::new(schema)
}

/// The plain output schema of a result type.
pub fn output_schema<T: schemars::JsonSchema + 'static>() -> std::sync::Arc<JsonObject> {
    let mut schema = (*rmcp::handler::server::tool::schema_for_output::<T>()).clone();
    plain_schema(&mut schema);
    std::sync::Arc::new(schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> JsonObject {
        let Value::Object(o) = v else { panic!("not an object") };
        o
    }

    fn refusal(args: Value) -> String {
        RemoteExecArgs::parse(&object(args)).unwrap_err().message
    }

    #[test]
    fn timeout_ms_comes_as_a_number_or_a_numeric_string() {
        for sent in [json!(5000), json!("5000"), json!(" 5000 "), json!(5000.0)] {
            let args = RemoteExecArgs::parse(&object(json!({"code": "c", "command": "x", "timeout_ms": sent})));
            assert_eq!(args.unwrap().timeout_ms, Some(5000), "{sent}");
        }
        let args = RemoteExecArgs::parse(&object(json!({"code": "c", "command": "x", "timeout_ms": null}))).unwrap();
        assert_eq!((args.timeout_ms, args.cwd), (None, None));
    }

    #[test]
    fn remote_exec_runs_what_was_sent_without_a_terminal() {
        let sent =
            json!({"code": "web", "command": "uptime", "cwd": "/tmp", "timeout_ms": 5000, "idempotency_key": "k"});
        let params = ExecParams::from(RemoteExecArgs::parse(&object(sent)).unwrap());
        let fields = (params.code.as_str(), params.command.as_str(), params.cwd.as_deref(), params.timeout_ms);
        assert_eq!(fields, ("web", "uptime", Some("/tmp"), Some(5000)));
        assert!(!params.pty);
    }

    #[test]
    fn wrong_arguments_are_refused_in_words() {
        let said = refusal(json!({"code": "c", "command": "x", "timeout_ms": "abc"}));
        assert!(said.starts_with("timeout_ms must be a whole number of milliseconds from 1000 to 3600000"), "{said}");
        assert!(said.contains("\"abc\" is not a number"), "{said}");
        for (sent, why) in [(json!(-5), "negative"), (json!(5), "5 is out of range"), (json!(1.5), "not whole")] {
            let said = refusal(json!({"code": "c", "command": "x", "timeout_ms": sent}));
            assert!(said.contains(why), "{sent}: {said}");
        }
        assert_eq!(refusal(json!({"code": "c"})), "command is missing; send the shell text to run, e.g. \"uname -a\".");
        assert!(refusal(json!({"code": 7, "command": "x"})).starts_with("code must be a string, not a number; send"));
        assert!(
            refusal(json!({"code": "c", "command": "x", "cwd": ["/"]}))
                .starts_with("cwd must be a string, not an array")
        );
        let said = SessionStatusArgs::parse(&JsonObject::new()).unwrap_err().message;
        assert!(said.starts_with("code is missing; send the machine's session code"), "{said}");
    }

    #[test]
    fn schemas_are_plain_and_state_the_timeout_range() {
        let schema = Value::Object((*input_schema::<RemoteExecArgs>()).clone());
        let timeout = &schema["properties"]["timeout_ms"];
        assert_eq!(timeout["type"], "integer", "{schema}");
        assert_eq!(
            (&timeout["minimum"], &timeout["maximum"], &timeout["default"]),
            (&json!(1000), &json!(3_600_000), &json!(300_000))
        );
        assert!(timeout.get("format").is_none(), "{schema}");
        assert_eq!(schema["properties"]["cwd"]["type"], "string", "{schema}");
        assert_eq!(schema["required"], json!(["code", "command"]));
        // Every property the schema names is one the parser reads.
        let names: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        assert_eq!(names, ["code", "command", "cwd", "idempotency_key", "timeout_ms"]);
    }

    #[test]
    fn plain_schema_keeps_standard_formats_and_required_nulls() {
        let mut schema = object(json!({
            "type": "object",
            "required": ["a"],
            "properties": {
                "a": {"type": ["string", "null"], "format": "date-time"},
                "b": {"type": ["integer", "null"], "format": "uint64", "default": null},
                "c": {"anyOf": [{"$ref": "#/$defs/X"}, {"type": "null"}]}
            },
            "$defs": {"X": {"type": "object", "properties": {"n": {"type": "integer", "format": "uint32"}}}}
        }));
        plain_schema(&mut schema);
        assert_eq!(
            Value::Object(schema),
            json!({
                "type": "object",
                "required": ["a"],
                "properties": {
                    "a": {"type": ["string", "null"], "format": "date-time"},
                    "b": {"type": "integer"},
                    "c": {"$ref": "#/$defs/X"}
                },
                "$defs": {"X": {"type": "object", "properties": {"n": {"type": "integer"}}}}
            })
        );
    }
}

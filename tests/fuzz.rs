//! Property-based fuzzing of everything that reads untrusted input: the
//! relay<->daemon wire decoder, the control-socket decoder, session codes,
//! the REST exec body and the MCP tool arguments. None may panic, and no
//! error may quote what it could not read (a marker planted in the input
//! must never come back). `PROPTEST_CASES` sets how many cases each runs
//! (256 by default); `scripts/fuzz` runs them longer.

use aic::protocol::SessionCode;
use aic::protocol::agent::{self, AgentMessage, RelayMessage, Requester};
use aic::protocol::control;
use aic::relay::exec::{self, ExecParams};
use aic::relay::mcp::RemoteExecArgs;
use proptest::prelude::*;

/// A planted marker: if an error message contains it, the error quoted input.
const MARK: &str = "qzxjvkwpmarker";

/// Inputs shaped like the frames the decoders expect, with the marker planted
/// where a value, a key or a tag goes, plus arbitrary text.
fn framed() -> impl Strategy<Value = String> {
    let junk = "\\PC{0,40}";
    let tags = prop_oneof![
        Just("hello"),
        Just("exec"),
        Just("output"),
        Just("exit"),
        Just("refused"),
        Just("operator"),
        Just("ping"),
        Just("status"),
        Just("mode"),
        Just("approve"),
    ];
    prop_oneof![
        junk.prop_map(|j| format!("{j}{MARK}")),
        (tags.clone(), junk).prop_map(|(t, j)| format!(r#"{{"type":"{t}","op":"{t}","id":"{MARK}{j}"}}"#)),
        tags.clone().prop_map(|t| format!(r#"{{"type":"{t}","op":"{t}","id":1,"{MARK}":"{MARK}","seq":"{MARK}"}}"#)),
        Just(format!(r#"{{"type":"{MARK}","op":"{MARK}","id":7}}"#)),
        (tags, any::<i64>()).prop_map(|(t, n)| format!(r#"{{"type":"{t}","op":"{t}","id":{n},"mode":"{MARK}"}}"#)),
        Just(format!(r#"{{"type":"exit","id":"{MARK}","exit_code":"{MARK}"}}"#)),
    ]
}

/// A string with the marker somewhere in it.
fn marked() -> impl Strategy<Value = String> {
    ("\\PC{0,20}", "\\PC{0,20}").prop_map(|(a, b)| format!("{a}{MARK}{b}"))
}

proptest! {
    #[test]
    fn the_wire_decoder_never_panics_nor_quotes_its_input(text in framed()) {
        if let Err(e) = agent::decode::<AgentMessage>(&text) {
            prop_assert!(!e.to_string().contains(MARK), "{e}");
        }
        if let Err(e) = agent::decode::<RelayMessage>(&text) {
            prop_assert!(!e.to_string().contains(MARK), "{e}");
        }
    }

    #[test]
    fn the_wire_decoder_takes_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = agent::decode::<AgentMessage>(&text);
        let _ = agent::decode::<RelayMessage>(&text);
    }

    #[test]
    fn the_control_decoder_never_panics(text in framed()) {
        let _ = serde_json::from_str::<control::Request>(&text);
        let _ = serde_json::from_str::<control::ServerFrame>(&text);
    }

    #[test]
    fn code_parsing_never_panics_nor_quotes_its_input(text in prop_oneof![marked(), "\\PC{0,30}", "[A-Za-z0-9 -]{0,24}"]) {
        match text.parse::<SessionCode>() {
            Ok(code) => prop_assert_eq!(code.canonical().parse::<SessionCode>().ok(), Some(code)),
            Err(e) => {
                let said = e.to_string();
                prop_assert!(!said.contains(MARK), "{}", said);
                prop_assert!(!said.chars().any(char::is_control), "{:?}", said);
            }
        }
    }

    #[test]
    fn rest_bodies_and_mcp_arguments_never_panic_nor_quote_the_command(
        code in prop_oneof![marked(), Just("AIC-7K3P-WX9M-RTBN".to_owned())],
        command in prop_oneof![marked(), Just(String::new()), Just(" \t".to_owned()), Just(format!("{MARK}\0"))],
        cwd in proptest::option::of(marked()),
        timeout_ms in proptest::option::of(any::<u64>()),
    ) {
        let body = serde_json::json!({"code": code, "command": command, "cwd": cwd, "timeout_ms": timeout_ms});
        let serde_json::Value::Object(object) = &body else { unreachable!("a JSON object") };
        let args = RemoteExecArgs::parse(object);
        let params: ExecParams = serde_json::from_value(body).unwrap();
        if let Ok(args) = &args {
            prop_assert_eq!(&args.command, &params.command);
        }
        let requester = Requester { who: "anonymous".into(), ip: "::1".into(), fingerprint: String::new() };
        match exec::request(&params, requester, 1024) {
            Ok(request) => {
                prop_assert!((1_000..=3_600_000).contains(&request.timeout_ms));
                prop_assert_eq!(request.command, command);
            }
            Err(e) => prop_assert!(!e.message.contains(MARK), "{}", e.message),
        }
    }

    #[test]
    fn mcp_arguments_of_any_shape_never_panic(text in framed()) {
        if let Ok(serde_json::Value::Object(object)) = serde_json::from_str::<serde_json::Value>(&text) {
            let _ = RemoteExecArgs::parse(&object);
        }
    }
}

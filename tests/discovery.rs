//! What clients discover the relay by: `/openapi.json` (checked against the
//! statuses the REST API really answers with), `/skill/SKILL.md`, and
//! `aic-relay connect-lines`.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{Value, json};

/// POSTs raw bytes to the exec route; returns the status and any Retry-After.
async fn exec_raw(http: &str, body: Vec<u8>) -> (u16, Option<String>) {
    let resp =
        client().post(format!("{http}/api/v1/exec")).header("content-type", "application/json").body(body).send();
    let resp = within("exec", resp).await.unwrap();
    let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (resp.status().as_u16(), retry)
}

async fn get_status(http: &str, path: &str) -> u16 {
    within(path, client().get(format!("{http}{path}")).send()).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_names_every_route_and_status_the_api_answers_with() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let mut config = daemon_config(&relay.ws(), &dir.path().join("daemon"));
    config.mode = Some(aic::daemon::Mode::Auto);
    config.max_concurrent = 1;
    let daemon = TestDaemon::start_with(config).await;
    let http = relay.http();
    let code = daemon.code().to_string();
    let body = |command: &str| serde_json::to_vec(&json!({"code": code, "command": command})).unwrap();

    // Drive each route into each answer it gives today, and note what was seen.
    let exec = "/api/v1/exec";
    let status = "/api/v1/status/{code}";
    let mut seen: BTreeSet<(&str, &str, u16)> = BTreeSet::new();
    seen.insert(("post", exec, exec_raw(&http, body("true")).await.0));
    seen.insert(("post", exec, exec_raw(&http, b"{not json".to_vec()).await.0));
    let unknown = aic::protocol::SessionCode::generate().to_string();
    let unknown_body = serde_json::to_vec(&json!({"code": unknown, "command": "true"})).unwrap();
    seen.insert(("post", exec, exec_raw(&http, unknown_body).await.0));
    seen.insert(("post", exec, exec_raw(&http, body(&"x".repeat(300 * 1024))).await.0));

    // The daemon runs one command at a time: a second one meanwhile is turned away.
    let pid_file = dir.path().join("pid");
    let first = tokio::spawn({
        let (http, body) = (http.clone(), body(&format!("echo $$ > {}; exec sleep 100", pid_file.display())));
        async move { exec_raw(&http, body).await }
    });
    eventually("the first command to start", || pid_file.exists()).await;
    let (busy, retry) = exec_raw(&http, body("true")).await;
    assert_eq!(retry.as_deref(), Some("1"), "429 carries Retry-After");
    seen.insert(("post", exec, busy));
    first.abort();

    seen.insert(("get", status, get_status(&http, &format!("/api/v1/status/{code}")).await));
    seen.insert(("get", status, get_status(&http, "/api/v1/status/AIC-NOPE").await));
    seen.insert(("get", status, get_status(&http, &format!("/api/v1/status/{unknown}")).await));
    seen.insert(("get", status, get_status(&http, "/api/v1/status/").await));
    seen.insert(("get", "/api/health", get_status(&http, "/api/health").await));
    // A key that is not valid, and an account quoting an unknown code.
    let key = relay.account("doc@example.com").await;
    for (auth, code) in [("aic_not_a_key", code.clone()), (key.as_str(), unknown.clone())] {
        let resp = client()
            .post(format!("{http}{exec}"))
            .bearer_auth(auth)
            .json(&json!({"code": code, "command": "true"}))
            .send()
            .await
            .unwrap();
        seen.insert(("post", exec, resp.status().as_u16()));
        let resp = client().get(format!("{http}/api/v1/status/{code}")).bearer_auth(auth).send().await.unwrap();
        seen.insert(("get", status, resp.status().as_u16()));
    }
    daemon.stop().await;
    seen.insert(("post", exec, exec_raw(&http, body("true")).await.0));

    let statuses: BTreeSet<u16> = seen.iter().map(|(_, _, s)| *s).collect();
    assert_eq!(statuses, BTreeSet::from([200, 400, 401, 403, 404, 413, 429, 503]), "the statuses this test provokes");

    let resp = within("openapi", client().get(format!("{http}/openapi.json")).send()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let doc: Value = resp.json().await.expect("the OpenAPI document parses as JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."), "{}", doc["openapi"]);
    assert_eq!(doc["servers"][0]["url"], http);
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    for (method, path, code) in &seen {
        let responses = &doc["paths"][path][method]["responses"];
        let response = &responses[code.to_string()];
        assert!(response.is_object(), "{method} {path} answered {code}, which the document does not list: {responses}");
        if *code >= 400 {
            let schema = &response["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {code}");
        }
    }

    // The request and response bodies are the handlers' own types.
    let exec_op = &doc["paths"][exec]["post"];
    assert_eq!(
        exec_op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ExecParams"
    );
    let ok = &exec_op["responses"]["200"]["content"];
    assert_eq!(ok["application/json"]["schema"]["$ref"], "#/components/schemas/ExecResult");
    assert!(ok["text/event-stream"].is_object(), "the event stream is documented: {ok}");
    assert!(exec_op["responses"]["429"]["headers"]["Retry-After"].is_object());
    let bearer = &doc["components"]["securitySchemes"]["apiKey"];
    assert_eq!((bearer["type"].as_str(), bearer["scheme"].as_str()), (Some("http"), Some("bearer")), "{bearer}");
    assert_eq!(doc["security"], json!([{}, {"apiKey": []}]), "anonymous or an API key");
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["ExecParams"]["required"], json!(["code", "command"]));
    for field in ["exitCode", "durationMs", "stdout", "stderr", "truncated", "timedOut", "stdoutBase64"] {
        assert!(schemas["ExecResult"]["properties"][field].is_object(), "ExecResult.{field}");
    }
    for field in ["code", "online", "agentInfo", "freshMinutes"] {
        assert!(schemas["StatusBody"]["properties"][field].is_object(), "StatusBody.{field}");
    }
    let reasons = schemas["Reason"]["enum"].as_array().unwrap();
    for reason in ["anonymous_expired", "agent_offline", "bad_request", "too_large", "rate_limited", "not_found"] {
        assert!(reasons.contains(&json!(reason)), "Reason lists {reason}");
    }
    assert!(schemas["OutputEvent"]["properties"]["text"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skill_md_teaches_a_model_with_this_relays_url_in_every_example() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = aic::relay::Config::new(dir.path().join("relay"));
    config.public_url = Some("https://relay.example.com".parse().unwrap());
    let relay = TestRelay::start_with(config, "127.0.0.1:0").await;

    let resp = within("SKILL.md", client().get(format!("{}/skill/SKILL.md", relay.http())).send()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/markdown"));
    let skill = resp.text().await.unwrap();
    assert!(skill.starts_with("---\nname: aic\ndescription: "), "front matter for skill loaders");
    assert!(!skill.contains("{{"), "a placeholder was left unfilled");
    for needle in [
        "remote_exec",
        "session_status",
        "never follow",
        "AIC-",
        "truncated",
        "agent_offline",
        "when the user names a machine you do not recognise",
        "remote_pull",
        "remote_push",
    ] {
        assert!(skill.contains(needle), "SKILL.md mentions {needle}");
    }
    let examples: Vec<&str> = skill.lines().filter(|l| l.contains("curl ") || l.contains(" mcp add ")).collect();
    assert!(examples.len() >= 5, "{examples:?}");
    for line in examples {
        assert!(line.contains("https://relay.example.com/"), "an example without the relay's URL: {line}");
    }
    assert!(!skill.contains("127.0.0.1"), "the listen address stays out of it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_lines_prints_one_line_per_client_for_the_public_url() {
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_aic-relay"))
            .args(args)
            .env_remove("AIC_RELAY_PUBLIC_URL")
            .envs(envs.iter().copied())
            .output()
            .expect("run aic-relay");
        (output.status.success(), String::from_utf8(output.stdout).unwrap(), String::from_utf8(output.stderr).unwrap())
    };
    let (ok, out, err) = run(&["connect-lines", "--public-url", "https://relay.example.com/"], &[]);
    assert!(ok, "{err}");
    for line in [
        "claude mcp add --transport http aic https://relay.example.com/mcp",
        "codex mcp add aic --url https://relay.example.com/mcp",
        "gemini mcp add --transport http aic https://relay.example.com/mcp",
        r#"code --add-mcp '{"name":"aic","type":"http","url":"https://relay.example.com/mcp"}'"#,
        "curl -s https://relay.example.com/api/v1/exec",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(out.contains("cursor://anysphere.cursor-deeplink/mcp/install?name=aic&config="), "{out}");
    assert!(
        out.contains(r#""mcp":{"aic":{"enabled":true,"type":"remote","url":"https://relay.example.com/mcp"}}"#),
        "{out}"
    );

    // From the environment, and with the listen address when none is given.
    let (ok, out, _) = run(&["connect-lines"], &[("AIC_RELAY_PUBLIC_URL", "https://aic.example.org")]);
    assert!(ok && out.contains("claude mcp add --transport http aic https://aic.example.org/mcp\n"), "{out}");
    let (ok, out, _) = run(&["connect-lines", "--listen", "127.0.0.1:9999"], &[]);
    assert!(ok && out.contains("codex mcp add aic --url http://127.0.0.1:9999/mcp\n"), "{out}");

    let (ok, _, err) = run(&["connect-lines", "--public-url", "relay.example.com"], &[]);
    assert!(!ok);
    assert!(err.contains("http:// or https://"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_timeout_range_is_the_one_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let doc: Value = within("openapi", client().get(format!("{}/openapi.json", relay.http())).send())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let params = &doc["components"]["schemas"]["ExecParams"]["properties"];
    let timeout = &params["timeout_ms"];
    assert_eq!(timeout["type"], "integer", "{timeout}");
    assert_eq!(
        (&timeout["minimum"], &timeout["maximum"], &timeout["default"]),
        (&json!(1000), &json!(3_600_000), &json!(300_000))
    );
    assert_eq!(params["cwd"]["type"], "string", "an optional field is left out, never null: {params}");

    let code = daemon.code().to_string();
    for (timeout_ms, expected) in [(999, 400), (3_600_001, 400), (1000, 200)] {
        let (status, body) =
            exec(&relay.http(), json!({"code": code, "command": "true", "timeout_ms": timeout_ms})).await;
        assert_eq!(status, expected, "{timeout_ms}: {body}");
        if expected == 400 {
            assert_eq!(body["reason"], "bad_request");
            assert!(body["error"].as_str().unwrap().starts_with("timeout_ms must be from 1000 to 3600000"), "{body}");
        }
    }
}

//! Large outputs end to end: binary output frames within the relay's credit
//! (and the JSON messages of a daemon that does not speak them), what the
//! relay holds for a caller that reads slowly, and the raw output mode.

mod common;

use std::time::Duration;

use aic::protocol::agent::{
    self, AgentMessage, CAP_OUTPUT_CHUNK, CAP_OUTPUT_FRAMES, ExecRequest, OUTPUT_CHUNK_LARGE, OUTPUT_HELD,
    OUTPUT_WINDOW, RelayMessage,
};
use aic::protocol::files::{FrameKind, encode_frame};
use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// `seq 1 …` cut at `bytes`: numbered lines, so a lost, doubled or reordered chunk shows.
fn numbered(bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 16);
    let mut n = 1u64;
    while out.len() < bytes {
        out.extend_from_slice(format!("{n}\n").as_bytes());
        n += 1;
    }
    out.truncate(bytes);
    out
}

fn command_for(bytes: usize) -> String {
    format!("seq 1 100000000 | head -c {bytes}")
}

/// A relay whose output cap lets `bytes` through; its link buffer is the default.
async fn relay_for(dir: &std::path::Path, bytes: usize) -> TestRelay {
    let mut config = aic::relay::Config::new(dir.join("relay"));
    config.max_output = 2 * bytes as u64;
    TestRelay::start_with(config, "127.0.0.1:0").await
}

/// The stdout an SSE answer carried in its `output` events, and its `result`.
fn sse_stdout(text: &str) -> (Vec<u8>, serde_json::Value) {
    let (mut stdout, mut result) = (Vec::new(), serde_json::Value::Null);
    for block in text.split("\n\n") {
        let name = block.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or_default();
        let data: String = block.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        match name {
            "output" => {
                let event: serde_json::Value = serde_json::from_str(&data).unwrap();
                assert!(event.get("base64").is_none());
                stdout.extend_from_slice(event["text"].as_str().unwrap().as_bytes());
            }
            "result" => result = serde_json::from_str(&data).unwrap(),
            _ => {}
        }
    }
    (stdout, result)
}

fn sse(relay: &TestRelay, code: aic::protocol::SessionCode, command: &str) -> reqwest::RequestBuilder {
    client()
        .post(format!("{}/api/v1/exec", relay.http()))
        .header("accept", "text/event-stream")
        .json(&json!({"code": code.to_string(), "command": command}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mebibytes_stream_through_sse_with_the_default_link_buffer() {
    const BYTES: usize = 64 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_for(dir.path(), BYTES).await;
    let daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let resp = sse(&relay, daemon.code(), &command_for(BYTES)).send().await.unwrap();
    let text = within_for(BULK_PATIENCE, "64 MiB over SSE", resp.text()).await.unwrap();
    let (stdout, result) = sse_stdout(&text);
    assert_eq!(stdout.len(), BYTES);
    assert!(stdout == numbered(BYTES), "the output differs");
    assert_eq!(
        (&result["exitCode"], &result["truncated"]),
        (&json!(0), &json!(false)),
        "{}",
        &text[text.len() - 300..]
    );
    assert_eq!(result["stdout"].as_str().unwrap().len(), BYTES);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_stops_reading_holds_the_command_not_the_relay() {
    const BYTES: usize = 64 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_for(dir.path(), BYTES).await;
    let daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let mut resp = sse(&relay, daemon.code(), &command_for(BYTES)).send().await.unwrap();
    let mut text = resp.chunk().await.unwrap().unwrap().to_vec();
    // The caller reads nothing now: the sockets fill, then the relay's window
    // for the command, and there it stays.
    let metrics = &relay.state.metrics;
    eventually_async("the relay to hold output for the stalled caller", || metrics.held() > 0).await;
    let mut most = 0;
    for _ in 0..50 {
        most = most.max(metrics.held());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The daemon sends large chunks, fewer of them: the window is the same in bytes.
    let window = OUTPUT_HELD as u64;
    assert!(most <= window, "the relay held {most} bytes for one command, past its window of {window}");
    // Reading again, the caller gets every byte: the command was slowed, not cut.
    while let Some(chunk) = within("the rest of the stream", resp.chunk()).await.unwrap() {
        text.extend_from_slice(&chunk);
    }
    let (stdout, result) = sse_stdout(std::str::from_utf8(&text).unwrap());
    assert!(stdout == numbered(BYTES), "the output differs ({} bytes)", stdout.len());
    assert_eq!((&result["exitCode"], &result["truncated"]), (&json!(0), &json!(false)));
    assert_eq!(metrics.held(), 0, "nothing is held once the caller has it all");
    daemon.stop().await;
}

/// Polls `check` (every 10 ms) until it holds, within the usual bound.
async fn eventually_async(what: &str, check: impl Fn() -> bool) {
    within(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

async fn next_exec(ws: &mut Ws) -> ExecRequest {
    match recv(ws).await {
        Some(RelayMessage::Exec(req)) => req,
        other => panic!("expected an exec, got {other:?}"),
    }
}

async fn exit(ws: &mut Ws, id: uuid::Uuid) {
    let exit = agent::ExitStatus { exit_code: 0, duration_ms: 1, truncated: false, timed_out: false };
    send(ws, &AgentMessage::Exit { id, exit }).await;
}

/// Waits for the relay to cancel command `id` (credit may come first), then
/// says it exited, as a daemon would.
async fn cancelled_then_exit(ws: &mut Ws, id: uuid::Uuid) {
    loop {
        match recv(ws).await {
            Some(RelayMessage::Cancel { id: cancelled }) if cancelled == id => break,
            Some(RelayMessage::OutputCredit { .. }) => continue,
            other => panic!("expected the command cancelled, got {other:?}"),
        }
    }
    exit(ws, id).await;
}

async fn frame(ws: &mut Ws, kind: FrameKind, id: uuid::Uuid, seq: u64, payload: &[u8]) {
    ws.send(Message::binary(encode_frame(kind, id, seq, payload))).await.unwrap();
}

#[tokio::test]
async fn a_daemon_without_output_frames_gets_json_and_its_held_output_is_bounded_not_its_total() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = aic::relay::Config::new(dir.path().to_path_buf());
    config.max_link_buffer = 100_000;
    let relay = TestRelay::start_with(config, "127.0.0.1:0").await;
    let (mut ws, creds) = fake_agent_speaking(&relay, &["pty"]).await;
    let http = relay.http();
    let body = json!({"code": creds.code.to_string(), "command": "cat big"});
    let caller = tokio::spawn(async move { exec(&http, body).await });
    let req = next_exec(&mut ws).await;
    assert_eq!(req.window, 0, "no credit for a daemon that did not say it speaks frames");
    // Four times the link's buffer, each chunk taken by the caller before the next.
    for part in 0..4u8 {
        let data = vec![b'a' + part; 60_000];
        send(&mut ws, &AgentMessage::Output { id: req.id, stream: agent::Stream::Stdout, data }).await;
        let (metrics, taken) = (&relay.state.metrics, 60_000 * (u64::from(part) + 1));
        eventually_async("the caller to take the chunk", || metrics.streamed_bytes() == taken).await;
        eventually_async("the relay to let go of it", || metrics.held() == 0).await;
    }
    exit(&mut ws, req.id).await;
    let (status, body) = caller.await.unwrap();
    let expected: String = (0..4u8).map(|p| String::from(char::from(b'a' + p)).repeat(60_000)).collect();
    assert_eq!((status, &body["truncated"]), (200, &json!(false)));
    assert!(body["stdout"] == expected, "the output differs");
}

#[tokio::test]
async fn output_frames_arrive_in_order_within_credit_and_a_frame_out_of_order_cuts_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let (mut ws, creds) = fake_agent_speaking(&relay, &[CAP_OUTPUT_FRAMES]).await;
    let http = relay.http();
    let body = json!({"code": creds.code.to_string(), "command": "cat big"});
    let caller = tokio::spawn(async move { exec(&http, body).await });
    let req = next_exec(&mut ws).await;
    assert_eq!((req.window, req.chunk), (OUTPUT_WINDOW, 0), "a daemon that did not say it reads larger chunks");
    send(&mut ws, &AgentMessage::Started { id: req.id }).await;
    // A full window, and then only as much as the relay grants as its caller takes it.
    let chunk = |seq: u64| vec![b'0' + (seq % 10) as u8; 1000];
    for seq in 0..u64::from(OUTPUT_WINDOW) {
        frame(&mut ws, FrameKind::Stdout, req.id, seq, &chunk(seq)).await;
    }
    let granted = match recv(&mut ws).await {
        Some(RelayMessage::OutputCredit { id, chunks }) if id == req.id => u64::from(chunks),
        other => panic!("expected credit, got {other:?}"),
    };
    assert!(granted > 0 && granted <= u64::from(OUTPUT_WINDOW), "{granted}");
    let end = u64::from(OUTPUT_WINDOW) + granted;
    for seq in u64::from(OUTPUT_WINDOW)..end {
        frame(&mut ws, FrameKind::Stderr, req.id, seq, &chunk(seq)).await;
    }
    // A gap in the numbering: the relay cannot vouch for the output any more.
    frame(&mut ws, FrameKind::Stdout, req.id, end + 1, b"lost").await;
    cancelled_then_exit(&mut ws, req.id).await;
    let (status, body) = caller.await.unwrap();
    assert_eq!((status, &body["truncated"]), (200, &json!(true)));
    let stdout: String = (0..u64::from(OUTPUT_WINDOW)).map(|s| String::from_utf8(chunk(s)).unwrap()).collect();
    let stderr: String = (u64::from(OUTPUT_WINDOW)..end).map(|s| String::from_utf8(chunk(s)).unwrap()).collect();
    assert!(body["stdout"] == stdout && body["stderr"] == stderr, "{body}");
}

#[tokio::test]
async fn a_daemon_that_reads_large_chunks_is_asked_for_them_within_the_same_bytes_and_a_larger_frame_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let (mut ws, creds) = fake_agent_speaking(&relay, &[CAP_OUTPUT_FRAMES, CAP_OUTPUT_CHUNK]).await;
    let http = relay.http();
    let body = json!({"code": creds.code.to_string(), "command": "cat big"});
    let caller = tokio::spawn(async move { exec(&http, body).await });
    let req = next_exec(&mut ws).await;
    assert_eq!(req.chunk as usize, OUTPUT_CHUNK_LARGE);
    assert_eq!(req.window as usize * OUTPUT_CHUNK_LARGE, OUTPUT_HELD, "the relay holds no more per command");
    send(&mut ws, &AgentMessage::Started { id: req.id }).await;
    let whole = vec![b'x'; OUTPUT_CHUNK_LARGE];
    frame(&mut ws, FrameKind::Stdout, req.id, 0, &whole).await;
    // One byte past the chunk the relay asked for: it cannot hold the daemon to its window any more.
    frame(&mut ws, FrameKind::Stdout, req.id, 1, &vec![b'y'; OUTPUT_CHUNK_LARGE + 1]).await;
    cancelled_then_exit(&mut ws, req.id).await;
    let (status, body) = caller.await.unwrap();
    assert_eq!((status, &body["truncated"]), (200, &json!(true)));
    assert!(body["stdout"].as_str() == std::str::from_utf8(&whole).ok(), "only the chunk within bounds is kept");
}

/// A raw answer as the wire carried it.
struct RawAnswer {
    head: String,
    body: Vec<u8>,
    trailers: String,
    /// The chunked body ended with its last chunk.
    complete: bool,
}

/// `POST /api/v1/exec` of `body` over a plain socket (`te`: with `TE:
/// trailers`), and everything the relay wrote back until it closed.
async fn exec_on_the_wire(relay: &TestRelay, body: &serde_json::Value, accept: &str, te: bool) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.to_string();
    let te = if te { "te: trailers\r\n" } else { "" };
    let request = format!(
        "POST /api/v1/exec HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\naccept: {accept}\r\n{te}connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut tcp = tokio::net::TcpStream::connect(relay.http().trim_start_matches("http://")).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut wire = Vec::new();
    within_for(BULK_PATIENCE, "the answer", tcp.read_to_end(&mut wire)).await.unwrap();
    wire
}

/// `POST /api/v1/exec` asking for raw output, over a plain socket, so the chunks and trailers show.
async fn raw_exec(relay: &TestRelay, code: aic::protocol::SessionCode, command: &str, te: bool) -> RawAnswer {
    let body = json!({"code": code.to_string(), "command": command});
    let wire = exec_on_the_wire(relay, &body, "application/octet-stream", te).await;
    let Some(split) = wire.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4) else {
        // Cut before even the head went out: a failure all the same.
        return RawAnswer { head: String::new(), body: Vec::new(), trailers: String::new(), complete: false };
    };
    let head = String::from_utf8(wire[..split].to_vec()).unwrap();
    let (mut rest, mut body) = (&wire[split..], Vec::new());
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return RawAnswer { head, body, trailers: String::new(), complete: false };
        };
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16).unwrap();
        rest = &rest[eol + 2..];
        if size == 0 {
            let trailers = String::from_utf8(rest.to_vec()).unwrap();
            return RawAnswer { head, body, trailers, complete: true };
        }
        if rest.len() < size + 2 {
            body.extend_from_slice(&rest[..size.min(rest.len())]);
            return RawAnswer { head, body, trailers: String::new(), complete: false };
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_output_is_stdout_exactly_with_how_it_ended_in_trailers() {
    // Large enough to go through many of the daemon's large chunks and fill its enlarged pipe.
    const BYTES: usize = 64 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_for(dir.path(), BYTES).await;
    let daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let command = format!("printf '\\377\\000bin'; echo err >&2; {}", command_for(BYTES));
    let answer = raw_exec(&relay, daemon.code(), &command, true).await;
    assert!(answer.head.starts_with("HTTP/1.1 200"), "{}", answer.head);
    assert!(answer.head.contains("content-type: application/octet-stream"), "{}", answer.head);
    let mut expected = b"\xff\x00bin".to_vec();
    expected.extend_from_slice(&numbered(BYTES));
    assert!(answer.complete);
    assert!(answer.body == expected, "the output differs ({} bytes)", answer.body.len());
    for trailer in ["aic-exit-code: 0", "aic-truncated: false", "aic-timed-out: false", "aic-duration-ms: "] {
        assert!(answer.trailers.contains(trailer), "{trailer} in {:?}", answer.trailers);
    }

    let failed = raw_exec(&relay, daemon.code(), "echo partial; exit 3", true).await;
    assert!(failed.complete && failed.body == b"partial\n");
    assert!(failed.trailers.contains("aic-exit-code: 3"), "{:?}", failed.trailers);
    daemon.stop().await;
}

/// Over HTTP/1.0 a body of unknown length ends when the connection closes:
/// the cut that tells a failed command would look like a whole answer, so
/// raw output is refused there (and the command never sent).
#[tokio::test]
async fn raw_output_over_http_1_0_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let (mut ws, creds) = fake_agent_speaking(&relay, &[CAP_OUTPUT_FRAMES, CAP_OUTPUT_CHUNK]).await;
    let body = json!({"code": creds.code.to_string(), "command": "echo partial; exit 3"}).to_string();
    let request = format!(
        "POST /api/v1/exec HTTP/1.0\r\nhost: relay\r\ncontent-type: application/json\r\n\
         accept: application/octet-stream\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut tcp = tokio::net::TcpStream::connect(relay.http().trim_start_matches("http://")).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let answer = within("the answer", async {
        let mut wire = Vec::new();
        tokio::select! {
            read = tcp.read_to_end(&mut wire) => read.map(|_| String::from_utf8_lossy(&wire).into_owned()),
            msg = recv(&mut ws) => panic!("the command went out: {msg:?}"),
        }
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.0 400") || answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("needs HTTP/1.1"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_output_of_a_failed_command_ends_without_its_last_chunk_for_a_client_without_trailers() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let ok = raw_exec(&relay, daemon.code(), "echo fine", false).await;
    assert!(ok.complete && ok.body == b"fine\n" && ok.trailers.trim().is_empty(), "{:?}", ok.trailers);
    let failed = raw_exec(&relay, daemon.code(), "echo partial; exit 3", false).await;
    assert!(failed.head.is_empty() || failed.head.starts_with("HTTP/1.1 200"), "{}", failed.head);
    assert!(b"partial\n".starts_with(&failed.body), "{:?}", failed.body);
    assert!(!failed.complete, "a failed command's body must not end as if it were whole");
    // A refusal before the start is an HTTP error, not a body.
    let (status, refused) = {
        let resp = client()
            .post(format!("{}/api/v1/exec", relay.http()))
            .header("accept", "application/octet-stream")
            .json(&json!({"code": daemon.code().to_string(), "command": "true", "cwd": "/nonexistent/dir"}))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!((status, refused["reason"].as_str()), (400, Some("bad_request")), "{refused}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_answer_is_the_same_whether_or_not_the_caller_reads_trailers() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let body = json!({"code": daemon.code().to_string(), "command": "echo fine"});
    let mut answers = Vec::new();
    for te in [false, true] {
        let wire = String::from_utf8(exec_on_the_wire(&relay, &body, "application/json", te).await).unwrap();
        let (head, json) = wire.split_once("\r\n\r\n").unwrap();
        // Sized, not chunked: there is nothing to put in trailers.
        assert!(head.contains("content-length: ") && !head.contains("transfer-encoding"), "{head}");
        let json: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!((&json["exitCode"], &json["stdout"]), (&json!(0), &json!("fine\n")), "{json}");
        // The headers it has (values differ: the date, the length of `durationMs`).
        answers.push(head.lines().map(|l| l.split(':').next().unwrap().to_owned()).collect::<Vec<_>>());
    }
    assert_eq!(answers[0], answers[1], "TE: trailers changed the head of a JSON answer");
    daemon.stop().await;
}

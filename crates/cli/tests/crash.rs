//! Nothing acknowledged is lost: `stopwise serve` killed with SIGKILL while feedback is being
//! posted, then restarted; every feedback that got a 200 is in the store, on a SQLite file and
//! on a real Postgres server (`STOPWISE_TEST_POSTGRES_URL`, started by `scripts/test`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::temp_dir;
use serde_json::{json, Value};

/// One HTTP/1.1 request on a fresh connection: the status and body (`None` when the server is
/// gone before answering).
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    socket.read_to_string(&mut answer).ok()?;
    let status = answer.get(9..12)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn serve(config: &std::path::Path, port: u16) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_stopwise"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !matches!(http(port, "GET", "/healthz", ""), Some((200, _))) {
        assert!(Instant::now() < deadline, "the server never became healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn kill_during_feedback(store_url: &str, dir: &std::path::Path) {
    let port = free_port();
    let config = dir.join("stopwise.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\n[store]\nurl = \"{store_url}\"\n[[routes]]\nmodel = \"default\"\nupstream = \"embedded\"\npolicy = \"never\"\n"
        ),
    )
    .unwrap();
    let mut server = serve(&config, port);
    let ids: Vec<String> = (0..4)
        .map(|i| {
            let body = json!({"model": "default", "messages": [{"role": "user", "content": format!("Say {i}.")}], "max_tokens": 4, "temperature": 0});
            let (status, answer) = http(port, "POST", "/v1/chat/completions", &body.to_string()).unwrap();
            assert_eq!(status, 200, "{answer}");
            serde_json::from_str::<Value>(&answer).unwrap()["id"].as_str().unwrap().to_owned()
        })
        .collect();
    // Two posters send feedback as fast as they can; each 200 is what the client was promised.
    let acknowledged = Arc::new(Mutex::new(std::collections::HashMap::<String, String>::new()));
    // A post in flight when the server died may have been committed without its 200 arriving.
    let unanswered = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let posters: Vec<_> = (0..2)
        .map(|poster| {
            let (ids, acknowledged, unanswered) = (ids.clone(), acknowledged.clone(), unanswered.clone());
            std::thread::spawn(move || {
                for round in 0.. {
                    let id = &ids[(round + poster) % ids.len()];
                    let gold = format!("{poster}-{round}");
                    let body = json!({"id": id, "gold": [gold]}).to_string();
                    // Hold the lock from sending to recording: the other poster's later 200 for
                    // the same id is then recorded later too.
                    let mut acked = acknowledged.lock().unwrap();
                    match http(port, "POST", "/v1/feedback", &body) {
                        Some((200, _)) => {
                            acked.insert(id.clone(), gold);
                        }
                        Some((status, answer)) => panic!("feedback refused: {status} {answer}"),
                        None => {
                            unanswered.lock().unwrap().push((id.clone(), gold));
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    for poster in posters {
        poster.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let unanswered = unanswered.lock().unwrap().clone();
    assert!(!acknowledged.is_empty(), "no feedback was acknowledged before the kill");
    // After a restart (migrations run again on the same store) every acknowledged feedback is
    // there, with the gold of its last acknowledged post.
    let mut server = serve(&config, port);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let store = stopwise_db::Store::open(store_url).await.unwrap();
        for (id, gold) in &acknowledged {
            let stored = store.feedback(id).await.unwrap().unwrap_or_else(|| panic!("feedback for {id} lost"));
            let stored = stored.gold.unwrap();
            let later_unanswered = unanswered.iter().any(|(i, g)| i == id && stored == [g.clone()]);
            assert!(stored == [gold.clone()] || later_unanswered, "{id}: stored {stored:?}, acknowledged {gold}");
        }
    });
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn acknowledged_feedback_survives_sigkill_on_sqlite() {
    let dir = temp_dir("crash-sqlite");
    kill_during_feedback(&format!("sqlite://{}", dir.join("stopwise.db").display()), &dir);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn acknowledged_feedback_survives_sigkill_on_postgres() {
    let admin = std::env::var("STOPWISE_TEST_POSTGRES_URL")
        .expect("STOPWISE_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts Postgres");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let name = format!("crash_{}", std::process::id());
    let url = runtime.block_on(stopwise_db::create_postgres_database(&admin, &name)).unwrap();
    let dir = temp_dir("crash-postgres");
    kill_during_feedback(&url, &dir);
    std::fs::remove_dir_all(&dir).ok();
}

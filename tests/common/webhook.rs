//! A webhook receiver on a loopback port: records every POST body with the status it
//! answered, for the tests of alerts (daemon failures, migrations, CLI jobs); and one
//! that accepts connections and never answers ([`Hanging`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// Which status to answer the `n`-th request with (counted from 0).
type Answer = fn(usize) -> u16;

pub struct Webhook {
    pub port: u16,
    /// Every request's (answered status, body), in arrival order.
    pub requests: Arc<Mutex<Vec<(u16, String)>>>,
}

impl Webhook {
    /// Answers every request with 200.
    pub fn start() -> Webhook {
        Self::answering(|_| 200)
    }

    /// Answers as `answer` says, e.g. 503 to the first request to test retries.
    pub fn answering(answer: Answer) -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(vec![]));
        let r = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let r = r.clone();
                std::thread::spawn(move || serve(stream, r, answer));
            }
        });
        Webhook { port, requests }
    }

    /// The bodies answered with 200, as JSON.
    pub fn accepted(&self) -> Vec<serde_json::Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(st, _)| *st == 200)
            .map(|(_, b)| serde_json::from_str(b).unwrap())
            .collect()
    }
}

fn serve(stream: TcpStream, requests: Arc<Mutex<Vec<(u16, String)>>>, answer: Answer) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut len = 0usize;
        let mut line = String::new();
        // Request line and headers.
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).unwrap();
        let status = {
            let mut reqs = requests.lock().unwrap();
            let status = answer(reqs.len());
            reqs.push((status, String::from_utf8(body).unwrap()));
            status
        };
        let reason = if status == 200 { "OK" } else { "Error" };
        let _ = write!(
            stream,
            "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n"
        );
    }
}

/// Accepts every connection, reads what comes, never answers: a webhook that hangs.
pub struct Hanging {
    pub port: u16,
    /// Connections accepted so far.
    pub connections: Arc<Mutex<usize>>,
}

impl Hanging {
    pub fn start() -> Hanging {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(Mutex::new(0));
        let c = connections.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                *c.lock().unwrap() += 1;
                // Read until the client gives up; never write.
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        });
        Hanging { port, connections }
    }
}

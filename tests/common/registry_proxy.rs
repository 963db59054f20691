//! A registry in front of the lab's (which is CNCF distribution: no referrers API, no
//! conditional requests) that plays the registry variants the field has: the OCI 1.1
//! referrers API with recorded, paged answers; Harbor's own 404 code; conditional manifest
//! `PUT`s honoured (`If-Match` / `If-None-Match: *`, 412 otherwise), with another writer
//! that can slip in before the next one. Every other request goes to the lab registry as
//! it came (methods, bodies, `Location` headers pointed back at the proxy).

use super::World;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A recorded referrers answer: for request paths containing `when`, `status`, `body` and
/// an optional `Link` header.
#[derive(Clone)]
struct Answer {
    when: String,
    status: u16,
    body: String,
    link: Option<String>,
}

#[derive(Default)]
struct State {
    answers: Mutex<Vec<Answer>>,
    harbor: AtomicBool,
    conditional: AtomicBool,
    /// An entry another writer adds to the referrers tag index just before the next
    /// manifest `PUT` to a `sha256-…` tag.
    interfere: Mutex<Option<serde_json::Value>>,
    /// `METHOD path -> status`, with the precondition a `PUT` carried.
    log: Mutex<Vec<String>>,
}

pub struct RegistryProxy {
    port: u16,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RegistryProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<Request> {
    use tokio::io::AsyncReadExt as _;
    let mut data = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))).collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = data[end..].to_vec();
    while body.len() < length {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    Some(Request { method, path, headers, body })
}

impl RegistryProxy {
    /// One in front of `w`'s lab registry, named in its manifests as a registry of its own.
    pub async fn in_front_of(w: &World) -> Self {
        let lab_port: u16 = w.lab.registry_host().rsplit(':').next().unwrap().parse().unwrap();
        let proxy = Self::start(lab_port).await;
        let cp = w.manifests().join("controlplane.toml");
        let text = std::fs::read_to_string(&cp).unwrap();
        let entry = format!("[[registry]]\nhost = \"{}\"\ninsecure = true\n\n[trust]", proxy.host());
        std::fs::write(&cp, text.replacen("[trust]", &entry, 1)).unwrap();
        proxy
    }

    async fn start(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        state.answers.lock().unwrap().push(Answer {
            when: String::new(),
            status: 404,
            body: String::new(),
            link: None,
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
            loop {
                let Ok((mut conn, _)) = listener.accept().await else { return };
                let (client, state) = (client.clone(), shared.clone());
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut conn).await else { return };
                    let (status, headers, body) = serve(&client, &state, target, port, &req).await;
                    state.log.lock().unwrap().push(format!(
                        "{} {} -> {status}{}",
                        req.method,
                        req.path,
                        req.header("if-match")
                            .map(|v| format!(" if-match={v}"))
                            .or(req.header("if-none-match").map(|v| format!(" if-none-match={v}")))
                            .unwrap_or_default()
                    ));
                    respond(&mut conn, &req.method, status, &headers, &body).await;
                });
            }
        });
        Self { port, state, task }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Answer every referrers request with `status` and `body`.
    pub fn answer(&self, status: u16, body: serde_json::Value) {
        self.answer_raw(status, &body.to_string());
    }

    pub fn answer_raw(&self, status: u16, body: &str) {
        *self.state.answers.lock().unwrap() =
            vec![Answer { when: String::new(), status, body: body.to_owned(), link: None }];
    }

    /// Answer referrers requests page by page: the first page (no `when` match) links to
    /// the second with `Link: <…?page=2>; rel="next"`, and so on.
    pub fn answer_pages(&self, pages: Vec<serde_json::Value>) {
        let n = pages.len();
        let mut answers: Vec<Answer> = pages
            .into_iter()
            .enumerate()
            .map(|(i, body)| Answer {
                when: if i == 0 { String::new() } else { format!("page={}", i + 1) },
                status: 200,
                body: body.to_string(),
                link: (i + 1 < n).then(|| format!("<@PATH@?page={}>; rel=\"next\"", i + 2)),
            })
            .collect();
        // The most specific match first.
        answers.reverse();
        *self.state.answers.lock().unwrap() = answers;
    }

    /// Answer the lab registry's 404s as Harbor does: its own error code `NOT_FOUND`.
    pub fn as_harbor(&self) {
        self.state.harbor.store(true, Ordering::SeqCst);
    }

    /// Honour conditional manifest `PUT`s.
    pub fn honour_preconditions(&self) {
        self.state.conditional.store(true, Ordering::SeqCst);
    }

    /// Before the next manifest `PUT` to a referrers tag, another writer adds `entry` to it.
    pub fn interfere_with(&self, entry: serde_json::Value) {
        *self.state.interfere.lock().unwrap() = Some(entry);
    }

    /// What was asked so far.
    pub fn log(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }
}

type Served = (u16, Vec<(String, String)>, Vec<u8>);

async fn serve(client: &reqwest::Client, state: &State, target: u16, port: u16, req: &Request) -> Served {
    let lab = format!("http://127.0.0.1:{target}");
    if req.path.contains("/referrers/") {
        let answers = state.answers.lock().unwrap().clone();
        let a = answers.iter().find(|a| req.path.contains(&a.when)).cloned().unwrap();
        let mut headers = vec![("content-type".to_owned(), "application/vnd.oci.image.index.v1+json".to_owned())];
        if let Some(link) = a.link {
            let path = req.path.split('?').next().unwrap();
            headers.push(("link".to_owned(), link.replace("@PATH@", path)));
        }
        return (a.status, headers, a.body.into_bytes());
    }
    let tag_put = req.method == "PUT" && req.path.contains("/manifests/sha256-");
    if tag_put {
        let entry = state.interfere.lock().unwrap().take();
        if let Some(entry) = entry {
            another_writer(client, &lab, &req.path, entry).await;
        }
    }
    if tag_put && state.conditional.load(Ordering::SeqCst) {
        let now = client
            .head(format!("{lab}{}", req.path))
            .header("accept", "application/vnd.oci.image.index.v1+json")
            .send()
            .await
            .unwrap();
        let current = (now.status() == 200)
            .then(|| now.headers().get("docker-content-digest").unwrap().to_str().unwrap().to_owned());
        let holds = match (req.header("if-match"), req.header("if-none-match"), &current) {
            (Some(m), _, Some(c)) => m.trim_matches('"') == c,
            (Some(_), _, None) => false,
            (None, Some("*"), c) => c.is_none(),
            (None, _, _) => true,
        };
        if !holds {
            return (412, Vec::new(), Vec::new());
        }
    }
    let mut fwd = client.request(req.method.parse().unwrap(), format!("{lab}{}", req.path));
    for (n, v) in &req.headers {
        if ["accept", "content-type", "authorization"].iter().any(|h| n.eq_ignore_ascii_case(h)) {
            fwd = fwd.header(n, v);
        }
    }
    let r = fwd.body(req.body.clone()).send().await.unwrap();
    let mut status = r.status().as_u16();
    let mut headers = Vec::new();
    for name in ["content-type", "docker-content-digest", "location", "range", "docker-upload-uuid"] {
        if let Some(v) = r.headers().get(name).and_then(|v| v.to_str().ok()) {
            let v = v.replace(&format!("127.0.0.1:{target}"), &format!("127.0.0.1:{port}"));
            headers.push((name.to_owned(), v));
        }
    }
    let mut body = r.bytes().await.unwrap().to_vec();
    if status == 404 && state.harbor.load(Ordering::SeqCst) {
        status = 404;
        headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        body = br#"{"errors":[{"code":"NOT_FOUND","message":"artifact not found"}]}"#.to_vec();
    }
    (status, headers, body)
}

/// Another tool adds `entry` to the referrers tag index at `path` (creating it if need be).
async fn another_writer(client: &reqwest::Client, lab: &str, path: &str, entry: serde_json::Value) {
    let url = format!("{lab}{path}");
    let r = client.get(&url).header("accept", "application/vnd.oci.image.index.v1+json").send().await.unwrap();
    let mut index: serde_json::Value = if r.status() == 200 {
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    } else {
        serde_json::json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [] })
    };
    index["manifests"].as_array_mut().unwrap().push(entry);
    let put = client
        .put(&url)
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(serde_json::to_vec(&index).unwrap())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "the other writer's PUT: {}", put.status());
}

async fn respond(
    conn: &mut tokio::net::TcpStream,
    method: &str,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) {
    use tokio::io::AsyncWriteExt as _;
    let mut out = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n", body.len());
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = conn.write_all(out.as_bytes()).await;
    if method != "HEAD" {
        let _ = conn.write_all(body).await;
    }
}

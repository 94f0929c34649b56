//! `exp serve`: every endpoint and error path through the router in-process; dynamic batching,
//! the queue limit and the SIGTERM drain over real loopback sockets with a real HTTP client
//! (ureq) against the `exp` binary.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use exp::serve::batcher::{BatchPolicy, Infer, Probabilities};
use exp::serve::{Forward, ServeOptions, ServeState};

use crate::common::{assert_exit_2, Env};
use crate::export::{reference, trained, Reference};

const POLICY: BatchPolicy = BatchPolicy {
    workers: 1,
    max_batch_size: 32,
    max_delay: Duration::ZERO,
    max_queue: 64,
};

fn options(policy: BatchPolicy, max_body_bytes: usize) -> ServeOptions {
    ServeOptions {
        addr: "127.0.0.1:0".parse().unwrap(),
        policy,
        max_body_bytes,
        dtype: candle_core::DType::F32,
    }
}

/// The reference model's forward pass, as the server runs it.
fn forward(r: &Reference) -> Arc<dyn Infer> {
    let artifact = &r.artifact;
    let repo_model = exp::weights::rebuild_model(
        &artifact.record,
        artifact.input,
        &artifact.tensors,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    Arc::new(Forward::new(
        repo_model,
        candle_core::Device::Cpu,
        candle_core::DType::F32,
        artifact.input,
    ))
}

/// The first `n` test images as pixel bytes 0–255 (from the reference's pixels / 255).
fn pixel_bytes(r: &Reference, n: usize) -> Vec<Vec<u8>> {
    let size: usize = r.shape.iter().product();
    r.pixels
        .chunks(size)
        .take(n)
        .map(|image| image.iter().map(|&v| (v * 255.0).round() as u8).collect())
        .collect()
}

fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

struct InProcess {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

impl InProcess {
    fn call(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Option<String>, serde_json::Value, String) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let request = request.body(Body::from(body)).unwrap();
        self.runtime.block_on(async {
            let response = self.router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let retry = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            (status, retry, json, text)
        })
    }

    fn json(&self, path: &str, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
        let (status, _, json, _) = self.call(
            "POST",
            path,
            Some("application/json"),
            body.to_string().into_bytes(),
        );
        (status, json)
    }
}

fn in_process(state: Arc<ServeState>) -> InProcess {
    InProcess {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        router: exp::serve::http::router(state),
    }
}

fn png(pixels: &[u8], side: u32) -> Vec<u8> {
    let image = image::GrayImage::from_raw(side, side, pixels.to_vec()).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn every_endpoint_and_error_in_process() {
    let env = Env::new();
    let (dir, tag) = trained(&env, "mnist-cnn", &[]);
    let r = reference(&env, &dir, &tag);
    let state = Arc::new(ServeState::new(&r.artifact, "cpu", &options(POLICY, 1 << 20)).unwrap());
    let server = in_process(state.clone());
    let images = pixel_bytes(&r, 8);
    let one = serde_json::json!({"inputs": [images[0]]});

    // Before the warm-up: alive, not ready, no predictions.
    let (status, retry, json, _) = server.call("GET", "/ready", None, vec![]);
    assert_eq!(
        (status, retry.as_deref()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("1"))
    );
    assert_eq!(
        json,
        serde_json::json!({"ready": false, "status": "warming up"})
    );
    assert_eq!(
        server.call("GET", "/ping", None, vec![]).0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (status, json) = server.json("/invocations", one.clone());
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    assert_eq!(
        server.call("GET", "/health", None, vec![]).2,
        serde_json::json!({"status": "ok", "ready": false})
    );

    state.warm_up_and_start(forward(&r), POLICY).unwrap();
    assert_eq!(
        server.call("GET", "/ready", None, vec![]).2,
        serde_json::json!({"ready": true})
    );
    assert_eq!(server.call("GET", "/ping", None, vec![]).0, StatusCode::OK);

    // Every request format answers as exp evaluates: labels and probabilities of its logits.
    let expected: Vec<Vec<f64>> = r.logits.chunks(r.classes).take(8).map(softmax).collect();
    let check = |json: &serde_json::Value, n: usize| {
        let predictions = json["predictions"].as_array().unwrap();
        assert_eq!(predictions.len(), n, "{json}");
        for (p, want) in predictions.iter().zip(&expected) {
            let got: Vec<f64> = p["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let label = (0..want.len())
                .max_by(|&a, &b| want[a].total_cmp(&want[b]))
                .unwrap();
            assert_eq!(p["label"], label, "{json}");
            assert_eq!(p["class"], label.to_string());
            let diff = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(diff <= 1e-6, "probabilities differ by {diff}");
        }
    };
    let nested: Vec<Vec<Vec<Vec<u8>>>> = images
        .iter()
        .map(|img| vec![img.chunks(28).map(<[u8]>::to_vec).collect()])
        .collect();
    for body in [
        serde_json::json!({"inputs": images}),
        serde_json::json!({"inputs": nested}),
        serde_json::json!({"instances": images}),
        serde_json::json!({"dataframe_split": {"columns": ["image"], "data": images.iter().map(|i| vec![i.clone()]).collect::<Vec<_>>()}}),
        serde_json::json!({"dataframe_records": images.iter().map(|i| serde_json::json!({"image": i})).collect::<Vec<_>>()}),
    ] {
        let (status, json) = server.json("/invocations", body);
        assert_eq!(status, StatusCode::OK, "{json}");
        check(&json, 8);
    }

    // PNG of the same test image: the same answer as its pixels in JSON.
    let (status, _, from_png, _) =
        server.call("POST", "/predict", Some("image/png"), png(&images[0], 28));
    assert_eq!(status, StatusCode::OK, "{from_png}");
    check(&from_png, 1);
    // A real photo (progressive JPEG, 512×512 RGB): grey, resized to 28×28, answered.
    let photo = std::fs::read(env.data.join("image-samples/imagenet_00_243.jpg")).unwrap();
    let (status, _, json, _) = server.call("POST", "/predict", Some("image/jpeg"), photo.clone());
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(
        json["predictions"][0]["probabilities"]
            .as_array()
            .unwrap()
            .len(),
        10
    );

    // Every real sample image (CIFAR-100 and Fashion-MNIST PNGs, progressive ImageNet JPEGs)
    // decodes: none is taken for a truncated file.
    let mut samples = 0;
    for entry in std::fs::read_dir(env.data.join("image-samples")).unwrap() {
        let path = entry.unwrap().path();
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("png" | "jpg")
        ) {
            continue;
        }
        let (status, _, _, text) =
            server.call("POST", "/predict", None, std::fs::read(&path).unwrap());
        assert_eq!(status, StatusCode::OK, "{}: {text}", path.display());
        samples += 1;
    }
    assert_eq!(
        samples, 60,
        "the sample images of ../shared/data/image-samples"
    );

    // Bad input: the status and a message naming what is wrong.
    let refused = |method: &str,
                   path: &str,
                   ct: Option<&str>,
                   body: Vec<u8>,
                   status: StatusCode,
                   message: &str| {
        let (got, _, json, text) = server.call(method, path, ct, body);
        assert_eq!(got, status, "{path}: {text}");
        assert!(
            json["message"]
                .as_str()
                .is_some_and(|m| m.contains(message)),
            "{path}: {text}"
        );
    };
    let bad = StatusCode::BAD_REQUEST;
    refused(
        "POST",
        "/invocations",
        Some("application/json"),
        b"{\"inputs\": [".to_vec(),
        bad,
        "the body is not JSON",
    );
    refused(
        "POST",
        "/invocations",
        Some("application/json"),
        br#"{"inputs": [[1, 2, 3]]}"#.to_vec(),
        bad,
        "inputs[0] has shape [3]; the model takes [1, 28, 28] or [28, 28] or 784 values",
    );
    refused(
        "POST",
        "/invocations",
        Some("application/json"),
        br#"{"rows": []}"#.to_vec(),
        bad,
        "the body has none of inputs, instances, dataframe_split or dataframe_records",
    );
    refused(
        "POST",
        "/invocations",
        Some("text/csv"),
        b"1,2".to_vec(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "/invocations takes application/json, not text/csv",
    );
    refused(
        "POST",
        "/predict",
        Some("image/png"),
        vec![],
        bad,
        "not a PNG or JPEG image (no bytes)",
    );
    refused(
        "POST",
        "/predict",
        None,
        photo[..photo.len() / 3].to_vec(),
        bad,
        "the JPEG image does not decode",
    );
    let corrupt = {
        let mut p = png(&images[0], 28);
        let n = p.len();
        p[n / 2..].iter_mut().for_each(|b| *b ^= 0x5a);
        p
    };
    refused(
        "POST",
        "/predict",
        Some("image/png"),
        corrupt,
        bad,
        "the PNG image does not decode",
    );
    refused(
        "POST",
        "/predict",
        Some("application/json"),
        b"{}".to_vec(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "/predict takes a PNG or JPEG body",
    );
    refused(
        "POST",
        "/invocations",
        Some("application/json"),
        vec![b' '; (1 << 20) + 1],
        StatusCode::PAYLOAD_TOO_LARGE,
        "the body is larger than 1048576 bytes (exp serve --max-body-bytes)",
    );
    refused(
        "GET",
        "/nope",
        None,
        vec![],
        StatusCode::NOT_FOUND,
        "no endpoint GET /nope",
    );
    refused(
        "GET",
        "/invocations",
        None,
        vec![],
        StatusCode::METHOD_NOT_ALLOWED,
        "GET /invocations is not served: POST /invocations and /predict, GET the others",
    );
    refused("POST", "/invocations", Some("application/json"), serde_json::json!({"inputs": images[0]}).to_string().into_bytes(), bad,
        "inputs is a list of numbers: it must be a list of images (wrap one image in a list: [[…]])");

    // What the server says about itself.
    let (_, _, info, _) = server.call("GET", "/v1/model", None, vec![]);
    let record = &r.artifact.record;
    assert_eq!(info["experiment"], "mnist-cnn");
    assert_eq!(info["architecture"], "seed-cnn");
    assert_eq!(info["run_tag"], tag.as_str());
    assert_eq!(info["weights_oid"], record.model.oid.as_str());
    assert_eq!(info["commit"], r.artifact.provenance.commit.as_str());
    assert_eq!(
        info["metrics"]["accuracy"],
        record.metrics.values["accuracy"]
    );
    assert_eq!(info["input"]["shape"], serde_json::json!([1, 28, 28]));
    assert_eq!(info["classes"].as_array().unwrap().len(), 10);
    let (_, _, version, _) = server.call("GET", "/version", None, vec![]);
    assert_eq!(version["exp"], env!("CARGO_PKG_VERSION"));
    let (status, _, _, metrics) = server.call("GET", "/metrics", None, vec![]);
    assert_eq!(status, StatusCode::OK);
    for line in [
        "exp_requests_total{endpoint=\"/invocations\",status=\"200\"} 5",
        "exp_requests_total{endpoint=\"/invocations\",status=\"400\"} 4",
        "exp_requests_total{endpoint=\"/predict\",status=\"200\"} 62",
        "exp_batch_size_count 67",
        "exp_batch_size_sum 102",
        "exp_queue_depth 0",
        "exp_ready 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
    assert!(metrics
        .contains("exp_request_duration_seconds_bucket{endpoint=\"/invocations\",le=\"0.005\"}"));
}

/// A model that holds every forward pass (after the warm-up) until the test lets it go.
struct Held {
    inner: Arc<dyn Infer>,
    started: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
    warmed: std::sync::atomic::AtomicBool,
}

impl Infer for Held {
    fn infer(&self, values: &[f32], n: usize) -> Result<Vec<Probabilities>, String> {
        if self.warmed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.started.lock().unwrap().send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
        }
        self.inner.infer(values, n)
    }
}

#[test]
fn a_full_queue_is_refused_with_retry_after() {
    let env = Env::new();
    let (dir, tag) = trained(&env, "mnist-cnn", &[]);
    let r = reference(&env, &dir, &tag);
    let policy = BatchPolicy {
        max_queue: 2,
        ..POLICY
    };
    let state = Arc::new(ServeState::new(&r.artifact, "cpu", &options(policy, 1 << 20)).unwrap());
    let (started_tx, started) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let held = Arc::new(Held {
        inner: forward(&r),
        started: Mutex::new(started_tx),
        release: Mutex::new(release_rx),
        warmed: false.into(),
    });
    state.warm_up_and_start(held, policy).unwrap();
    let body = serde_json::json!({"inputs": [pixel_bytes(&r, 1)[0]]}).to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let router = exp::serve::http::router(state.clone());
    let send = |router: axum::Router, body: String| async move {
        let request = Request::post("/invocations")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        let retry = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, retry, String::from_utf8_lossy(&bytes).into_owned())
    };
    // One request on the worker (held), two in the queue: the fourth is refused.
    let first = runtime.spawn(send(router.clone(), body.clone()));
    started.recv_timeout(Duration::from_secs(30)).unwrap();
    let queued: Vec<_> = (0..2)
        .map(|_| runtime.spawn(send(router.clone(), body.clone())))
        .collect();
    while state.batcher().unwrap().depth() < 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (status, retry, text) = runtime.block_on(send(router.clone(), body.clone()));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(
        text.contains("the queue is full (2 requests waiting)"),
        "{text}"
    );
    // Released, every accepted request is answered.
    for _ in 0..2 {
        release.send(()).unwrap();
    }
    assert_eq!(runtime.block_on(first).unwrap().0, StatusCode::OK);
    for q in queued {
        // The two queued requests ran as one batch.
        assert_eq!(runtime.block_on(q).unwrap().0, StatusCode::OK);
    }
    drop(release);
}

/// A running `exp serve` process and its address.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(env: &Env, dir: &Path, args: &[&str]) -> Server {
        let mut all = vec!["serve", "--addr", "127.0.0.1:0", "--device", "cpu"];
        all.extend_from_slice(args);
        let mut child = env
            .exp_cmd(dir, &all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .rsplit_once(" on ")
            .map(|(_, url)| url.to_string())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let server = Server { child, url };
        for _ in 0..600 {
            if ureq::get(&format!("{}/ready", server.url)).call().is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("exp serve did not become ready");
    }

    fn post(&self, body: &str) -> (u16, serde_json::Value) {
        let response = ureq::post(&format!("{}/invocations", self.url))
            .config()
            .http_status_as_error(false)
            .build()
            .header("content-type", "application/json")
            .send(body)
            .unwrap();
        let status = response.status().as_u16();
        let json = response
            .into_body()
            .read_json()
            .unwrap_or(serde_json::Value::Null);
        (status, json)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn batching_under_32_clients_answers_as_batch_one() {
    let env = Env::new();
    let (dir, tag) = trained(&env, "mnist-cnn", &[]);
    let r = reference(&env, &dir, &tag);
    let images = pixel_bytes(&r, 256);
    // Batch 1: one request at a time on a server that never batches.
    let single = Server::start(&env, &dir, &[&tag, "--max-batch-size", "1"]);
    let one_by_one: Vec<serde_json::Value> = images
        .iter()
        .map(|image| {
            let (status, json) = single.post(&serde_json::json!({"inputs": [image]}).to_string());
            assert_eq!(status, 200, "{json}");
            json["predictions"][0].clone()
        })
        .collect();
    drop(single);
    // 32 clients at once, on a server that waits up to 5 ms to fill batches of up to 32.
    let server = Arc::new(Server::start(
        &env,
        &dir,
        &[
            &tag,
            "--max-batch-size",
            "32",
            "--max-delay-ms",
            "5",
            "--workers",
            "2",
        ],
    ));
    let images = Arc::new(images);
    let clients: Vec<_> = (0..32)
        .map(|client| {
            let (server, images) = (server.clone(), images.clone());
            std::thread::spawn(move || {
                (client..images.len())
                    .step_by(32)
                    .map(|i| {
                        let (status, json) =
                            server.post(&serde_json::json!({"inputs": [images[i]]}).to_string());
                        assert_eq!(status, 200, "{json}");
                        (i, json["predictions"][0].clone())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut answered = 0;
    for client in clients {
        for (i, p) in client.join().unwrap() {
            let want = &one_by_one[i];
            assert_eq!(p["label"], want["label"], "image {i}");
            let diff = p["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .zip(want["probabilities"].as_array().unwrap())
                .map(|(a, b)| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs())
                .fold(0.0, f64::max);
            assert!(diff <= 1e-6, "image {i}: probabilities differ by {diff}");
            answered += 1;
        }
    }
    assert_eq!(answered, 256);
    // The requests were batched: fewer forward passes than requests.
    let metrics = ureq::get(&format!("{}/metrics", server.url))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    let (passes, images_run) = (value("exp_batch_size_count"), value("exp_batch_size_sum"));
    assert_eq!(images_run, 256.0);
    assert!(
        passes < 256.0,
        "no batching: {passes} forward passes\n{metrics}"
    );
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_0() {
    let env = Env::new();
    let (dir, tag) = trained(&env, "mnist-cnn", &[]);
    let r = reference(&env, &dir, &tag);
    let body = serde_json::json!({"inputs": [pixel_bytes(&r, 1)[0]]}).to_string();
    // A worker waits up to 2 s to fill a batch of 64: the requests are in flight when the
    // signal comes.
    let mut server = Server::start(
        &env,
        &dir,
        &[&tag, "--max-batch-size", "64", "--max-delay-ms", "2000"],
    );
    let url = server.url.clone();
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            std::thread::spawn(move || {
                let response = ureq::post(&format!("{url}/invocations"))
                    .header("content-type", "application/json")
                    .send(&body)
                    .unwrap();
                response.status().as_u16()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let pid = server.child.id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    for request in in_flight {
        assert_eq!(request.join().unwrap(), 200);
    }
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut log = String::new();
    std::io::Read::read_to_string(&mut server.child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(
        log.contains("SIGTERM: draining in-flight requests") && log.contains("drained; exiting"),
        "{log}"
    );
    // After the drain nothing listens.
    assert!(ureq::get(&format!("{url}/ping")).call().is_err());
}

#[test]
fn bad_sources_and_options_exit_2() {
    let env = Env::new();
    let (dir, tag) = trained(&env, "mnist-cnn", &[]);
    let refused = |args: &[&str], message: &str| assert_exit_2(&env, &dir, args, message);
    refused(&["serve", "nope"], "unknown revision \"nope\"");
    refused(
        &["serve", &tag, "--device", "cpu", "--precision", "f16"],
        "--precision f16 needs a CUDA device; the model would run on cpu",
    );
    refused(
        &["serve", &tag, "--device", "tpu"],
        "--device: expected auto, cpu, cuda or cuda:N",
    );
    // Options are checked before the port is bound: nothing is printed, nothing allocated.
    refused(
        &["serve", &tag, "--workers", "0"],
        "--workers 0: must be from 1 to 256",
    );
    refused(
        &["serve", &tag, "--max-queue", "18446744073709551615"],
        "--max-queue 18446744073709551615: must be from 1 to 65536",
    );
    refused(
        &["serve", &tag, "--max-batch-size", "100000"],
        "--max-batch-size 100000: must be from 1 to 4096",
    );
    refused(
        &["serve", &tag, "--max-delay-ms", "60000"],
        "--max-delay-ms 60000: at most 10000",
    );
    refused(
        &["serve", &tag, "--max-body-bytes", "0"],
        "--max-body-bytes 0 would refuse every request",
    );
    // The port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    refused(
        &["serve", &tag, "--addr", &addr],
        &format!("cannot listen on {addr}"),
    );
}

#[test]
fn a_connection_that_never_finishes_its_headers_is_closed() {
    use std::io::{Read, Write};
    let env = Env::new();
    let (dir, tag) = trained(&env, "mnist-cnn", &[]);
    let server = Server::start(&env, &dir, &[&tag]);
    let mut stream =
        std::net::TcpStream::connect(server.url.trim_start_matches("http://")).unwrap();
    stream
        .write_all(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    // The server closes the connection (after a 408 or without a word): read ends.
    let read = stream.read_to_end(&mut answer);
    assert!(read.is_ok(), "{read:?} after {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // Other clients were served all along.
    assert!(ureq::get(&format!("{}/health", server.url)).call().is_ok());
}

/// `/predict` decodes and resizes as Pillow does for torchvision's `Resize` (bilinear,
/// antialiased): on every real sample image, grey and RGB, square and not, the mean absolute
/// difference from Pillow's pixels is at most half a grey level.
#[test]
fn decoding_matches_pillow_within_half_a_grey_level() {
    let env = Env::new();
    let Some(python) = crate::export::python_tools() else {
        return;
    };
    let mut images: Vec<std::path::PathBuf> = std::fs::read_dir(env.data.join("image-samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("png" | "jpg")))
        .collect();
    images.sort();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/resize_check.py");
    for [c, h, w] in [[1, 28, 28], [3, 32, 32], [3, 24, 40], [1, 64, 48]] {
        let shape = exp::data::ImageShape {
            channels: c,
            height: h,
            width: w,
        };
        let out = env.path(&format!("decoded-{c}-{h}-{w}"));
        std::fs::create_dir_all(&out).unwrap();
        for image in &images {
            let bytes = exp::data::decode::decode_image(&std::fs::read(image).unwrap(), shape)
                .unwrap_or_else(|e| panic!("{}: {e}", image.display()));
            let name = image.file_name().unwrap().to_str().unwrap();
            std::fs::write(out.join(format!("{name}.raw")), bytes).unwrap();
        }
        let result = std::process::Command::new(&python)
            .arg(&script)
            .arg(&out)
            .args([c, h, w].map(|d| d.to_string()))
            .args(&images)
            .output()
            .unwrap();
        assert!(
            result.status.success(),
            "{}",
            crate::common::describe(&result)
        );
        let report = String::from_utf8_lossy(&result.stdout).into_owned();
        assert_eq!(report.lines().count(), images.len(), "{report}");
        eprintln!("[{c}, {h}, {w}] vs Pillow:\n{report}");
        for line in report.lines() {
            let mad: f64 = line
                .strip_prefix("mad=")
                .and_then(|l| l.split(' ').next())
                .and_then(|m| m.parse().ok())
                .unwrap_or_else(|| panic!("{line}"));
            assert!(mad <= 0.5, "[{c}, {h}, {w}]: {line}\n{report}");
        }
    }
}

//! The fake agent: a tonic server for `SpiffeWorkloadAPI` on a Unix socket.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use crate::ca::{trust_domain_of, Svid};
use crate::jwt::{self, JwtKey};
use crate::pb;
use crate::pb::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};

/// The metadata header every Workload API call must carry (`workload.spiffe.io: true`).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Default lifetime of minted JWT-SVIDs (SPIRE's default: 5 minutes).
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);

/// One `FetchJWTSVID` call that got past the security-header check (recorded whatever its outcome).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtRequest {
    /// Audiences asked for, in request order.
    pub audiences: Vec<String>,
    /// SPIFFE ID asked for; empty when the caller did not name one.
    pub spiffe_id: String,
    /// When the call arrived.
    pub at: SystemTime,
}

/// Trust domain (name or `spiffe://` form) → CA certificates, DER.
pub type Bundles = Vec<(String, Vec<Vec<u8>>)>;

struct State {
    svid: Svid,
    /// Keyed by trust domain name (no `spiffe://`), in the caller's order.
    bundles: Bundles,
    x509_gen: u64,
    jwt_keys: Vec<JwtKey>,
    jwt_key_seq: u64,
    jwt_gen: u64,
    jwt_ttl: Duration,
    jwt_requests: Vec<JwtRequest>,
    last_jwt: Option<String>,
    unavailable: bool,
    closed: bool,
    x509_streams: usize,
}

impl State {
    fn own_td(&self) -> &str {
        trust_domain_of(&self.svid.spiffe_id)
    }

    fn x509_svid_response(&self) -> pb::X509svidResponse {
        let own = self.own_td();
        let mut bundle = Vec::new();
        let mut federated = HashMap::new();
        for (td, certs) in &self.bundles {
            if td == own {
                bundle.extend(certs.concat());
            } else {
                federated.insert(format!("spiffe://{td}"), certs.concat());
            }
        }
        pb::X509svidResponse {
            svids: vec![pb::X509svid {
                spiffe_id: self.svid.spiffe_id.clone(),
                x509_svid: self.svid.chain_der.concat(),
                x509_svid_key: self.svid.key_pkcs8_der.clone(),
                bundle,
                hint: String::new(),
            }],
            crl: Vec::new(),
            federated_bundles: federated,
        }
    }

    fn x509_bundles_response(&self) -> pb::X509BundlesResponse {
        pb::X509BundlesResponse {
            crl: Vec::new(),
            bundles: self
                .bundles
                .iter()
                .map(|(td, certs)| (format!("spiffe://{td}"), certs.concat()))
                .collect(),
        }
    }

    fn jwt_bundles_response(&self) -> pb::JwtBundlesResponse {
        pb::JwtBundlesResponse {
            bundles: HashMap::from([(
                format!("spiffe://{}", self.own_td()),
                jwt::jwks(&self.jwt_keys).into_bytes(),
            )]),
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// Bumped after every change; open streams wake on it and re-read `state`.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        {
            let mut state = self.lock();
            f(&mut state);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    fn check_available(&self) -> Result<(), Status> {
        let state = self.lock();
        if state.closed || state.unavailable {
            return Err(unavailable());
        }
        Ok(())
    }
}

fn unavailable() -> Status {
    Status::unavailable("fake workload API is unavailable")
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A stream that sends `build(state)` now and again each time `generation(state)` changes;
/// it ends with `Unavailable` when the fake is made unavailable, and cleanly on shutdown.
fn watch_stream<T: Send + 'static>(
    shared: Arc<Shared>,
    generation: fn(&State) -> u64,
    build: fn(&State) -> T,
) -> ResponseStream<T> {
    let rx = shared.changed.subscribe();
    let seed = Some((shared, rx, None::<u64>));
    Box::pin(futures_util::stream::unfold(seed, move |seed| async move {
        let (shared, mut rx, last) = seed?;
        loop {
            rx.borrow_and_update();
            {
                let state = shared.lock();
                if state.closed {
                    return None;
                }
                if state.unavailable {
                    return Some((Err(unavailable()), None));
                }
                let current = generation(&state);
                if last != Some(current) {
                    let item = build(&state);
                    drop(state);
                    return Some((Ok(item), Some((shared, rx, Some(current)))));
                }
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }))
}

struct Service {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Service {
    type FetchX509SVIDStream = ResponseStream<pb::X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        _request: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        self.shared.check_available()?;
        self.shared.lock().x509_streams += 1;
        Ok(Response::new(watch_stream(
            Arc::clone(&self.shared),
            |s| s.x509_gen,
            State::x509_svid_response,
        )))
    }

    async fn fetch_x509_bundles(
        &self,
        _request: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        self.shared.check_available()?;
        Ok(Response::new(watch_stream(
            Arc::clone(&self.shared),
            |s| s.x509_gen,
            State::x509_bundles_response,
        )))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        let req = request.into_inner();
        let mut state = self.shared.lock();
        state.jwt_requests.push(JwtRequest {
            audiences: req.audience.clone(),
            spiffe_id: req.spiffe_id.clone(),
            at: SystemTime::now(),
        });
        if state.closed || state.unavailable {
            return Err(unavailable());
        }
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if !req.spiffe_id.is_empty() {
            if !req.spiffe_id.starts_with("spiffe://") {
                return Err(Status::invalid_argument(format!(
                    "invalid requested SPIFFE ID: {}",
                    req.spiffe_id
                )));
            }
            if req.spiffe_id != state.svid.spiffe_id {
                return Err(Status::permission_denied("no identity issued"));
            }
        }
        let key = state.jwt_keys.last().expect("there is always a JWT key");
        let token = key.mint(&state.svid.spiffe_id, &req.audience, state.jwt_ttl);
        state.last_jwt = Some(token.clone());
        Ok(Response::new(pb::JwtsvidResponse {
            svids: vec![pb::Jwtsvid {
                spiffe_id: state.svid.spiffe_id.clone(),
                svid: token,
                hint: String::new(),
            }],
        }))
    }

    async fn fetch_jwt_bundles(
        &self,
        _request: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.shared.check_available()?;
        Ok(Response::new(watch_stream(
            Arc::clone(&self.shared),
            |s| s.jwt_gen,
            State::jwt_bundles_response,
        )))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        self.shared.check_available()?;
        let req = request.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let claims = {
            let state = self.shared.lock();
            jwt::validate(&state.jwt_keys, &req.svid, &req.audience)
                .map_err(Status::invalid_argument)?
        };
        let spiffe_id = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        Ok(Response::new(pb::ValidateJwtsvidResponse {
            spiffe_id,
            claims: Some(prost_types::Struct {
                fields: claims
                    .iter()
                    .map(|(k, v)| (k.clone(), jwt::to_proto_value(v)))
                    .collect(),
            }),
        }))
    }
}

/// SPIRE rejects calls without `workload.spiffe.io: true` with `InvalidArgument`; so does the fake.
#[allow(clippy::result_large_err)] // tonic's interceptor signature
fn check_security_header(request: Request<()>) -> Result<Request<()>, Status> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(value) if value == "true" => Ok(request),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

/// A fake SPIRE agent serving the SPIFFE Workload API on a Unix socket.
///
/// Serves one identity (the SVID given to [`start`](Self::start) or the last
/// [`push_x509`](Self::push_x509)). Dropping it stops the server and removes the socket, like
/// [`shutdown`](Self::shutdown) does, but without waiting.
pub struct FakeWorkloadApi {
    shared: Arc<Shared>,
    socket_path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl std::fmt::Debug for FakeWorkloadApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeWorkloadApi")
            .field("socket_path", &self.socket_path)
            .finish_non_exhaustive()
    }
}

fn normalize(bundles: Bundles) -> Bundles {
    bundles
        .into_iter()
        .map(|(td, certs)| (trust_domain_of(&td).to_owned(), certs))
        .collect()
}

impl FakeWorkloadApi {
    /// Binds `socket_path` (a stale file there is removed first) and serves on the current
    /// tokio runtime. `bundles` should hold the SVID's own trust domain (its CA goes in the
    /// SVID entry's `bundle`; clients reject a response without it); the others are sent as
    /// federated bundles.
    ///
    /// # Errors
    /// If the socket cannot be bound.
    pub async fn start(socket_path: &Path, svid: Svid, bundles: Bundles) -> io::Result<Self> {
        let socket_path = std::path::absolute(socket_path)?;
        match std::fs::remove_file(&socket_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = tokio::net::UnixListener::bind(&socket_path)?;
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                svid,
                bundles: normalize(bundles),
                x509_gen: 1,
                jwt_keys: vec![JwtKey::generate(1)],
                jwt_key_seq: 1,
                jwt_gen: 1,
                jwt_ttl: DEFAULT_JWT_TTL,
                jwt_requests: Vec::new(),
                last_jwt: None,
                unavailable: false,
                closed: false,
                x509_streams: 0,
            }),
            changed,
        });
        let service = SpiffeWorkloadApiServer::with_interceptor(
            Service {
                shared: Arc::clone(&shared),
            },
            check_security_header,
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        Ok(Self {
            shared,
            socket_path,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `unix:///abs/path/to/socket` — for `X509Source::builder().endpoint(..)`,
    /// `WorkloadApiClient::connect_to(..)` or `SPIFFE_ENDPOINT_SOCKET`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket_path.display())
    }

    /// The absolute socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The SVID currently served.
    pub fn current_svid(&self) -> Svid {
        self.shared.lock().svid.clone()
    }

    /// Replaces the SVID and bundles; open `FetchX509SVID` / `FetchX509Bundles` streams get
    /// the new material at once, new streams start with it. `FetchJWTBundles` streams get a
    /// new message too when the SVID's trust domain changed.
    pub fn push_x509(&self, svid: Svid, bundles: Bundles) {
        self.shared.update(|s| {
            let td_changed = trust_domain_of(&s.svid.spiffe_id) != trust_domain_of(&svid.spiffe_id);
            s.svid = svid;
            s.bundles = normalize(bundles);
            s.x509_gen += 1;
            if td_changed {
                s.jwt_gen += 1;
            }
        });
    }

    /// Every `FetchJWTSVID` call so far that carried the security header, oldest first.
    pub fn jwt_requests(&self) -> Vec<JwtRequest> {
        self.shared.lock().jwt_requests.clone()
    }

    /// JWKS (`{"keys":[...]}`) of the JWT-SVID signing keys: the current one and any not
    /// retired by [`retire_old_jwt_keys`](Self::retire_old_jwt_keys). EC P-256 JWKs with
    /// `kty`, `crv`, `kid`, `x`, `y` (no `alg`/`use`, as SPIRE sends them).
    pub fn jwks_json(&self) -> String {
        jwt::jwks(&self.shared.lock().jwt_keys)
    }

    /// `kid` of the key that signs new JWT-SVIDs.
    pub fn current_jwt_kid(&self) -> String {
        let state = self.shared.lock();
        state.jwt_keys.last().expect("a JWT key").kid.clone()
    }

    /// The last JWT-SVID handed out by `FetchJWTSVID`.
    pub fn last_jwt_svid(&self) -> Option<String> {
        self.shared.lock().last_jwt.clone()
    }

    /// Starts signing with a new key (new `kid`). The old key stays in the JWKS (as during a
    /// SPIRE rotation) until [`retire_old_jwt_keys`](Self::retire_old_jwt_keys);
    /// `FetchJWTBundles` streams get the new JWKS at once.
    pub fn rotate_jwt_key(&self) {
        self.shared.update(|s| {
            s.jwt_key_seq += 1;
            s.jwt_keys.push(JwtKey::generate(s.jwt_key_seq));
            s.jwt_gen += 1;
        });
    }

    /// Drops every JWT key but the current one from the JWKS (and pushes it).
    pub fn retire_old_jwt_keys(&self) {
        self.shared.update(|s| {
            let keep = s.jwt_keys.len().saturating_sub(1);
            s.jwt_keys.drain(..keep);
            s.jwt_gen += 1;
        });
    }

    /// Lifetime of JWT-SVIDs minted from now on (default 5 min; whole seconds, at least 1 s).
    pub fn set_jwt_ttl(&self, ttl: Duration) {
        self.shared.lock().jwt_ttl = ttl;
    }

    /// While on, every RPC answers `Unavailable` and open streams end with `Unavailable`
    /// (the agent going away). Turning it off lets clients reconnect.
    pub fn set_unavailable(&self, on: bool) {
        self.shared.update(|s| s.unavailable = on);
    }

    /// Number of `FetchX509SVID` streams successfully opened so far (grows on reconnects).
    pub fn connections(&self) -> usize {
        self.shared.lock().x509_streams
    }

    /// Ends open streams (cleanly), stops serving and removes the socket.
    pub async fn shutdown(mut self) {
        self.close();
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        let _ = std::fs::remove_file(&self.socket_path);
    }

    fn close(&mut self) {
        self.shared.update(|s| s.closed = true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for FakeWorkloadApi {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            self.close();
            task.abort();
            let _ = std::fs::remove_file(&self.socket_path);
        }
    }
}

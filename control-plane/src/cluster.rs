//! Starting and stopping the real control plane: etcd, kube-apiserver
//! (client-certificate admin, RBAC, service-account tokens for TokenRequest
//! and TokenReview), Istio's CRDs, and istiod with ambient on, trusting
//! `istio-system/ztunnel` to impersonate, signing with the mesh's plug-in
//! CA files.
//!
//! Every program listens on 127.0.0.1 only, on ports chosen free at start
//! (so several control planes — tests — can run side by side), and is
//! stopped when the [`ControlPlane`] is dropped: istiod, then the API
//! server, then etcd; the state folder goes with them. A folder is held by
//! one control plane at a time (a lock file says which process has it).

use std::ffi::OsString;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde::Deserialize as _;
use thiserror::Error;

use crate::peers::Programs;
use crate::pki::{PkiError, PkiFiles};
use crate::process::{ProcessError, Program};

/// Where istiod's CA and xDS listen, as node proxies dial it (it is in the
/// serving certificate as an IP SAN, through `ISTIOD_CUSTOM_HOST`).
pub const ISTIOD_HOST: &str = "127.0.0.1";
/// The namespace istiod and the node proxies' ServiceAccount live in.
pub const ISTIO_SYSTEM: &str = "istio-system";
/// The node proxies' ServiceAccount, trusted by istiod to impersonate.
pub const ZTUNNEL_ACCOUNT: &str = "ztunnel";
/// The cluster id istiod and the node proxies agree on (istiod's default).
pub const CLUSTER_ID: &str = "Kubernetes";
/// The Service VIP range: the lab's VIPs (10.96.0.10, .11) fall in it.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// Why the control plane could not start.
#[derive(Debug, Error)]
pub enum ControlPlaneError {
    /// Another control plane holds the folder.
    #[error(
        "a control plane is already running in {dir} (process {pid}); stop it (Ctrl-C in its terminal, or kill {pid}) or give another folder"
    )]
    AlreadyRunning {
        /// Its folder.
        dir: PathBuf,
        /// The process holding it, as its lock file says.
        pid: String,
    },
    /// A file or folder could not be made.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A program is missing.
    #[error(transparent)]
    Programs(#[from] crate::peers::PeerError),
    /// The Kubernetes keys could not be made.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A program failed to start or to become ready.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The kubeconfig the control plane wrote could not be loaded.
    #[error("the kubeconfig {path} cannot be used: {reason}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The API server refused a step.
    #[error("kube-apiserver refused {step}: {source}")]
    Api {
        /// What was being done.
        step: String,
        /// Its answer.
        #[source]
        source: kube::Error,
    },
    /// A token was asked for a node the world does not have.
    #[error("node {0} is not in the world put into the API server: it has no node proxy pod")]
    UnknownNode(String),
    /// A token was asked for a pod the world does not have.
    #[error("pod {0} is not in the world put into the API server")]
    UnknownPod(String),
    /// A document given to apply is not a Kubernetes object.
    #[error("document {index} of {source_name} is not a Kubernetes object: {reason}")]
    Document {
        /// Where the documents came from.
        source_name: String,
        /// Which document (from 1).
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Istio's CRDs file could not be read.
    #[error("cannot read Istio's CRDs from {path}: {reason}")]
    Crds {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ControlPlaneError {
    let path = path.to_path_buf();
    move |source| ControlPlaneError::Io { what, path, source }
}

/// How to start a control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// The programs and CRDs.
    pub programs: Programs,
    /// The mesh's plug-in CA folder (`ca-cert.pem`, `ca-key.pem`,
    /// `root-cert.pem`, `cert-chain.pem`, as `hbone-lab ca init` writes);
    /// istiod signs with it. `None`: a fresh one in the state folder.
    pub mesh_ca: Option<PathBuf>,
    /// The state folder (keys, logs, etcd's data, the kubeconfig); `None`:
    /// a temporary one. It is emptied when the control plane stops.
    pub dir: Option<PathBuf>,
    /// istiod's `--log_output_level` (e.g. `default:info,ads:debug`).
    pub istiod_log_level: String,
    /// More environment for istiod (e.g. `PILOT_DEBOUNCE_AFTER`).
    pub istiod_env: Vec<(String, String)>,
}

impl ControlPlaneOptions {
    /// The defaults for `programs`.
    pub fn new(programs: Programs) -> Self {
        ControlPlaneOptions {
            programs,
            mesh_ca: None,
            dir: None,
            istiod_log_level: "default:info".into(),
            istiod_env: Vec::new(),
        }
    }
}

/// istiod's listeners.
#[derive(Debug, Clone, Copy)]
pub struct IstiodPorts {
    /// CA and xDS over TLS (15012 in a cluster).
    pub secure_grpc: SocketAddr,
    /// xDS in plaintext (15010).
    pub grpc: SocketAddr,
    /// Debug endpoints and `/ready` (8080).
    pub http: SocketAddr,
    /// Prometheus metrics (15014).
    pub monitoring: SocketAddr,
    /// Injection and validation webhooks (15017).
    pub webhook: SocketAddr,
}

/// A running control plane. Dropping it stops istiod, the API server and
/// etcd, in that order, and removes its folder.
pub struct ControlPlane {
    // Fields drop in order: the programs, newest first, then the folder.
    istiod: Program,
    apiserver: Program,
    etcd: Program,
    /// An admin client of the API server.
    pub client: Client,
    /// The kubeconfig for `kubectl` and `istioctl` (admin, self-contained).
    pub kubeconfig: PathBuf,
    /// Where the API server listens.
    pub api_server: SocketAddr,
    /// Where istiod listens.
    pub istiod_ports: IstiodPorts,
    /// The mesh root (PEM) that istiod's serving certificate and every
    /// workload certificate chain to.
    pub root_pem: String,
    /// The mesh's plug-in CA folder istiod signs with.
    pub mesh_ca: PathBuf,
    /// The state folder.
    pub dir: PathBuf,
    _lock: nix::fcntl::Flock<File>,
    _temp: Option<tempfile::TempDir>,
    clean_dir: bool,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("dir", &self.dir)
            .field("api_server", &self.api_server)
            .field("istiod_ports", &self.istiod_ports)
            .finish_non_exhaustive()
    }
}

/// A port on 127.0.0.1 that nothing listens on now.
fn free_port() -> Result<SocketAddr, ControlPlaneError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(io("choosing a free port on", Path::new("127.0.0.1")))?;
    listener
        .local_addr()
        .map_err(io("choosing a free port on", Path::new("127.0.0.1")))
}

fn args(list: &[String]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

/// Takes the folder's lock, or says who holds it.
fn lock(dir: &Path) -> Result<nix::fcntl::Flock<File>, ControlPlaneError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io("cannot open the lock file", &path))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut locked) => {
            locked.set_len(0).map_err(io("cannot write", &path))?;
            locked
                .rewind()
                .and_then(|_| write!(locked, "{}", std::process::id()))
                .map_err(io("cannot write", &path))?;
            Ok(locked)
        }
        Err((mut file, _)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(ControlPlaneError::AlreadyRunning {
                dir: dir.to_path_buf(),
                pid: pid.trim().to_string(),
            })
        }
    }
}

/// A kubeconfig naming the API server and the admin, with every
/// certificate inline, so that it can be copied anywhere.
fn kubeconfig_yaml(server: SocketAddr, pki: &PkiFiles) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "hbone-lab", "cluster": {
            "server": format!("https://{server}"),
            "certificate-authority-data": b64(&pki.ca_pem),
        }}],
        "users": [{"name": "hbone-lab-admin", "user": {
            "client-certificate-data": b64(&pki.admin_cert_pem),
            "client-key-data": b64(&pki.admin_key_pem),
        }}],
        "contexts": [{"name": "hbone-lab", "context": {"cluster": "hbone-lab", "user": "hbone-lab-admin"}}],
        "current-context": "hbone-lab",
    });
    serde_yaml::to_string(&doc).expect("a JSON value is YAML")
}

/// A client of the API server the kubeconfig at `path` names.
pub async fn client_for(path: &Path) -> Result<Client, ControlPlaneError> {
    let bad = |reason: String| ControlPlaneError::Kubeconfig {
        path: path.to_path_buf(),
        reason,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    Client::try_from(config).map_err(|e| bad(e.to_string()))
}

/// Is the API server at `addr` ready (`/readyz` answers `ok`)?
async fn api_ready(client: &Client, addr: SocketAddr) -> bool {
    // Not listening yet: say so without the client logging a connect error.
    if tokio::net::TcpStream::connect(addr).await.is_err() {
        return false;
    }
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .expect("a literal request");
    matches!(client.request_text(request).await, Ok(body) if body.trim() == "ok")
}

/// Does `addr` answer `GET path` with 200?
async fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let host = addr.to_string();
    let get = hbone_workloads::http_get::Get::once(&host, path);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), hbone_workloads::http_get::get(&mut stream, &get)).await,
        Ok(Ok(answer)) if answer.status == 200
    )
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and istiod, applies Istio's CRDs and
    /// creates `istio-system`; returns once istiod says it is ready.
    pub async fn start(options: ControlPlaneOptions) -> Result<ControlPlane, ControlPlaneError> {
        let (temp, dir) = match &options.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
                (None, dir.clone())
            }
            None => {
                // The pid in the name: whose folder it is, for whoever looks.
                let temp = tempfile::Builder::new()
                    .prefix(&format!("hbone-lab-control-plane-{}-", std::process::id()))
                    .tempdir()
                    .map_err(io("cannot create a folder in", &std::env::temp_dir()))?;
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        let lock = lock(&dir)?;
        // What an earlier, killed run left: the lock is ours, so nobody uses it.
        for stale in ["etcd", "istiod", "cacerts"] {
            let _ = std::fs::remove_dir_all(dir.join(stale));
        }
        let pki = crate::pki::write(&dir)?;

        let started = Instant::now();
        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let mut etcd = Program::spawn(
            "etcd",
            &options.programs.etcd,
            &args(&[
                "--name=hbone-lab".into(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls=http://{etcd_client}"),
                format!("--advertise-client-urls=http://{etcd_client}"),
                format!("--listen-peer-urls=http://{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://{etcd_peer}"),
                format!("--initial-cluster=hbone-lab=http://{etcd_peer}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ]),
            &[],
            &dir,
            dir.join("etcd.log"),
        )?;
        etcd.wait_until("serving clients", Duration::from_secs(30), || {
            http_ok(etcd_client, "/health")
        })
        .await?;
        tracing::info!(addr = %etcd_client, after = ?started.elapsed(), "etcd is ready");

        let api_server = free_port()?;
        let mut apiserver = Program::spawn(
            "kube-apiserver",
            &options.programs.kube_apiserver,
            &args(&[
                format!("--etcd-servers=http://{etcd_client}"),
                format!("--cert-dir={}", dir.display()),
                format!("--tls-cert-file={}", pki.serving_cert.display()),
                format!("--tls-private-key-file={}", pki.serving_key.display()),
                format!("--client-ca-file={}", pki.ca.display()),
                format!("--secure-port={}", api_server.port()),
                "--bind-address=127.0.0.1".into(),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--allow-privileged=true".into(),
                "--authorization-mode=RBAC".into(),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!(
                    "--service-account-key-file={}",
                    pki.service_account_pub.display()
                ),
                format!(
                    "--service-account-signing-key-file={}",
                    pki.service_account_key.display()
                ),
                "--profiling=false".into(),
            ]),
            &[],
            &dir,
            dir.join("kube-apiserver.log"),
        )?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(api_server, &pki))
            .map_err(io("cannot write", &kubeconfig))?;
        let client = client_for(&kubeconfig).await?;
        apiserver
            .wait_until("becoming ready (/readyz)", Duration::from_secs(90), || {
                api_ready(&client, api_server)
            })
            .await?;
        tracing::info!(addr = %api_server, after = ?started.elapsed(), "kube-apiserver is ready");

        apply_crds(&client, &options.programs.crds).await?;
        create_namespace(&client, ISTIO_SYSTEM).await?;
        tracing::info!(after = ?started.elapsed(), "Istio's CRDs are established");

        let mesh_ca = match &options.mesh_ca {
            Some(dir) => dir.clone(),
            None => {
                let generated = dir.join("cacerts");
                hbone_ca::plugin::PluginCerts::generate("cluster.local")
                    .and_then(|c| c.write(&generated))
                    .map_err(|e| ControlPlaneError::Io {
                        what: "cannot write the mesh CA into",
                        path: generated.clone(),
                        source: std::io::Error::other(e),
                    })?;
                generated
            }
        };
        let root_path = mesh_ca.join(hbone_ca::plugin::ROOT_CERT);
        let root_pem = std::fs::read_to_string(&root_path)
            .map_err(io("cannot read the mesh root", &root_path))?;

        let ports = IstiodPorts {
            secure_grpc: free_port()?,
            grpc: free_port()?,
            http: free_port()?,
            monitoring: free_port()?,
            webhook: free_port()?,
        };
        let istiod_dir = dir.join("istiod");
        std::fs::create_dir_all(&istiod_dir).map_err(io("cannot create", &istiod_dir))?;
        let mut istiod_env: Vec<(&str, String)> = vec![
            ("PILOT_ENABLE_AMBIENT", "true".into()),
            (
                "CA_TRUSTED_NODE_ACCOUNTS",
                format!("{ISTIO_SYSTEM}/{ZTUNNEL_ACCOUNT}"),
            ),
            (
                "ISTIOD_CUSTOM_HOST",
                format!("istiod.{ISTIO_SYSTEM}.svc,{ISTIOD_HOST}"),
            ),
            ("POD_NAMESPACE", ISTIO_SYSTEM.into()),
            ("CLUSTER_ID", CLUSTER_ID.into()),
            ("ROOT_CA_DIR", mesh_ca.display().to_string()),
            ("KUBECONFIG", kubeconfig.display().to_string()),
        ];
        istiod_env.extend(
            options
                .istiod_env
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone())),
        );
        let mut istiod = Program::spawn(
            "istiod",
            &options.programs.istiod,
            &args(&[
                "discovery".into(),
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--httpAddr={}", ports.http),
                format!("--grpcAddr={}", ports.grpc),
                format!("--secureGRPCAddr={}", ports.secure_grpc),
                format!("--monitoringAddr={}", ports.monitoring),
                format!("--httpsAddr={}", ports.webhook),
                // 0: a free port of its own choosing, on localhost.
                "--ctrlz_port=0".into(),
                // Its proxies are ours and go with it: no 10 s drain.
                "--shutdownDuration=1s".into(),
                format!("--log_output_level={}", options.istiod_log_level),
            ]),
            &istiod_env,
            &istiod_dir,
            dir.join("istiod.log"),
        )?;
        istiod
            .wait_until("becoming ready (/ready)", Duration::from_secs(90), || {
                http_ok(ports.http, "/ready")
            })
            .await?;
        tracing::info!(addr = %ports.secure_grpc, after = ?started.elapsed(), "istiod is ready");

        Ok(ControlPlane {
            istiod,
            apiserver,
            etcd,
            client,
            kubeconfig,
            api_server,
            istiod_ports: ports,
            root_pem,
            mesh_ca,
            clean_dir: temp.is_none(),
            dir,
            _lock: lock,
            _temp: temp,
        })
    }

    /// Starts one with the programs found as [`crate::peers::find`] finds
    /// them (environment, else what the build script built) and the
    /// default options.
    pub async fn start_found() -> Result<ControlPlane, ControlPlaneError> {
        let programs = Programs::find(&crate::peers::Given::default())?;
        Self::start(ControlPlaneOptions::new(programs)).await
    }

    /// `https://127.0.0.1:<port>`: istiod's CA and xDS, as a node proxy's
    /// `CA_ADDRESS` and `XDS_ADDRESS`.
    pub fn istiod_url(&self) -> String {
        format!("https://{}", self.istiod_ports.secure_grpc)
    }

    /// The programs, for their logs and process ids.
    pub fn programs(&self) -> [&Program; 3] {
        [&self.etcd, &self.apiserver, &self.istiod]
    }

    /// The first program that has exited, with how and its log's tail.
    pub fn check_running(&mut self) -> Result<(), ProcessError> {
        for program in [&mut self.etcd, &mut self.apiserver, &mut self.istiod] {
            if let Some(status) = program.exited() {
                return Err(ProcessError::Exited {
                    program: program.name,
                    step: "the control plane ran".into(),
                    status,
                    log: program.log.clone(),
                    tail: program.log_tail(20),
                });
            }
        }
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for program in [&mut self.istiod, &mut self.apiserver, &mut self.etcd] {
            program.stop(Duration::from_secs(5));
        }
        if self.clean_dir {
            // A folder the user named: empty it but keep the folder (and
            // the lock, released when `_lock` drops).
            if let Ok(entries) = std::fs::read_dir(&self.dir) {
                for entry in entries.flatten() {
                    if entry.file_name() == "lock" {
                        continue;
                    }
                    let path = entry.path();
                    let _ = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                }
            }
        }
    }
}

/// Creates namespace `name` and its `default` ServiceAccount, unless they exist.
pub async fn create_namespace(client: &Client, name: &str) -> Result<(), ControlPlaneError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    create_or_keep(&api, &namespace, &format!("namespace {name}")).await?;
    // What kube-controller-manager's service-account controller would do
    // (it does not run here): every namespace has a `default` account, and
    // a pod that names none runs as it.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), name);
    let default = k8s_openapi::api::core::v1::ServiceAccount {
        metadata: ObjectMeta {
            name: Some("default".into()),
            namespace: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..Default::default()
    };
    create_or_keep(
        &accounts,
        &default,
        &format!("service account {name}/default"),
    )
    .await
}

/// Creates `object`; one that already exists is kept as it is.
pub async fn create_or_keep<K>(
    api: &Api<K>,
    object: &K,
    what: &str,
) -> Result<(), ControlPlaneError>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(source) => Err(ControlPlaneError::Api {
            step: format!("creating {what}"),
            source,
        }),
    }
}

/// Creates every CRD of Istio's `crd-all.gen.yaml` and waits until each
/// is established (served).
async fn apply_crds(client: &Client, path: &Path) -> Result<(), ControlPlaneError> {
    let bad = |reason: String| ControlPlaneError::Crds {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut crds = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| bad(format!("document {}: {e}", i + 1)))?;
        if value.is_null() {
            continue;
        }
        let crd: CustomResourceDefinition =
            serde_yaml::from_value(value).map_err(|e| bad(format!("document {}: {e}", i + 1)))?;
        crds.push(crd);
    }
    if crds.is_empty() {
        return Err(bad("it holds no CustomResourceDefinition".into()));
    }
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        create_or_keep(&api, crd, &format!("CRD {name}")).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        loop {
            let current = api
                .get(&name)
                .await
                .map_err(|source| ControlPlaneError::Api {
                    step: format!("reading CRD {name}"),
                    source,
                })?;
            let established = current
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if Instant::now() > deadline {
                return Err(bad(format!("CRD {name} was not established within 30 s")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

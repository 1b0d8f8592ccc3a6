//! The cluster's object store: what etcd plus the apiserver's registry are in k3s.
//!
//! One store lives in the first (cluster-init) server and is persisted as JSON under the data dir
//! (`server/db/standin/state.json`), so the cluster survives a restart of the stand-in. Other
//! servers and agents reach it through the first server's API. Objects are kept as JSON, checked
//! against the real k8s-openapi types on the way in (see [`admission`]). Each write bumps a global
//! `resourceVersion`, the object's `generation` when its spec changes (for the types that keep
//! one), and records field ownership for server-side apply (see [`patch`]). Watchers get every
//! change through a broadcast channel; a bounded history lets a watch resume from a recent
//! resourceVersion, and an older one gets `410 Expired`, as from etcd after compaction.
//!
//! What differs from etcd is listed in `docs/testing.md` ("The k3s stand-in"): a single copy (no quorum, no
//! replication: if the first server is down, the API is down), resourceVersions are one counter
//! for all types, no compaction other than the bounded watch history.

pub mod admission;
pub mod errors;
pub mod patch;
pub mod resources;
pub mod selectors;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use errors::ApiError;
use patch::FieldPath;
use resources::ResourceType;
use selectors::{FieldSelector, LabelSelector};

/// How many past events a watch can resume from.
const HISTORY: usize = 20_000;

/// The current time as Kubernetes writes `metav1.Time` (RFC 3339, seconds).
pub fn now() -> String {
    let ts = jiff::Timestamp::now();
    let secs = ts.as_second();
    jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| ts.to_string())
}

/// `metav1.MicroTime` (RFC 3339 with microseconds).
pub fn now_micro() -> String {
    let ts = jiff::Timestamp::now();
    let micros = ts.as_microsecond();
    match jiff::Timestamp::from_microsecond(micros) {
        Ok(t) => format!("{}", t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ")),
        Err(_) => ts.to_string(),
    }
}

/// Parse a `metav1.Time`.
pub fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// A random UID in the UUID v4 text form.
pub fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-{}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        ["8", "9", "a", "b"][(b[8] & 3) as usize],
        &h[17..20],
        &h[20..32]
    )
}

/// `generateName` suffix: 5 characters from the apiserver's alphabet.
pub fn name_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..n)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// One watch event.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub rv: u64,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The store key of the object's type (`core/pods`).
    pub type_key: String,
    pub namespace: String,
    pub object: Value,
    /// The previous version, for `MODIFIED` events (a watch with a selector turns an object that
    /// leaves the selection into `DELETED` and one that enters it into `ADDED`).
    pub prev: Option<Value>,
}

/// One manager's ownership of an object's fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManagerEntry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub fields: BTreeSet<FieldPath>,
}

#[derive(Default, Serialize, Deserialize)]
struct Persisted {
    rv: u64,
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    managers: BTreeMap<String, Vec<ManagerEntry>>,
    extra: BTreeMap<String, Value>,
}

struct State {
    p: Persisted,
    history: VecDeque<Arc<WatchEvent>>,
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    Main,
    Status,
}

/// Options of one write.
#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    pub manager: String,
    pub dry_run: bool,
    pub force: bool,
    /// `fieldValidation=Strict`.
    pub strict: bool,
}

/// Options of one delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    pub grace_seconds: Option<i64>,
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub dry_run: bool,
}

/// The result of a delete.
#[derive(Debug, Clone)]
pub enum Deleted {
    /// Removed now; the last state.
    Gone(Value),
    /// Marked for deletion (finalizers, graceful pod termination, namespace cleanup).
    Pending(Value),
}

/// The kind of patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Strategic,
    Json,
    Apply,
}

/// A write's result: the stored object and any warnings for the `Warning` header.
#[derive(Debug, Clone)]
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
    pub created: bool,
}

fn obj_key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

fn meta_str<'a>(v: &'a Value, f: &str) -> Option<&'a str> {
    v.get("metadata")
        .and_then(|m| m.get(f))
        .and_then(Value::as_str)
}

/// The object store.
pub struct Store {
    state: Mutex<State>,
    tx: tokio::sync::broadcast::Sender<Arc<WatchEvent>>,
    dirty: tokio::sync::Notify,
    path: Option<PathBuf>,
    /// Parameters for admission (service CIDR, ...).
    pub params: admission::ClusterParams,
    /// Log every write (the `trace-writes` knob), to debug what a controller or client changed.
    pub trace: std::sync::atomic::AtomicBool,
}

impl Store {
    /// A store persisted at `path` (loaded if it exists), or in memory only.
    pub fn open(
        path: Option<PathBuf>,
        params: admission::ClusterParams,
    ) -> anyhow::Result<Arc<Store>> {
        let p = match &path {
            Some(path) if path.exists() => {
                let text = std::fs::read_to_string(path)?;
                serde_json::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            _ => Persisted::default(),
        };
        let (tx, _) = tokio::sync::broadcast::channel(8192);
        Ok(Arc::new(Store {
            state: Mutex::new(State {
                p,
                history: VecDeque::new(),
            }),
            tx,
            dirty: tokio::sync::Notify::new(),
            path,
            params,
            trace: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Write the state to disk now (atomic rename).
    pub fn flush(&self) -> anyhow::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = {
            let st = self.lock();
            serde_json::to_string(&st.p)?
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Persist changes in the background (at most every 100 ms).
    pub fn spawn_persister(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.dirty.notified().await;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                if let Err(e) = me.flush() {
                    super::log::error(format!("k3s-standin: failed to persist the store: {e}"));
                }
            }
        });
    }

    /// Subscribe to changes.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<WatchEvent>> {
        self.tx.subscribe()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().p.rv
    }

    /// Events after `rv`, or `410 Expired` if they are no longer kept.
    pub fn events_since(&self, rv: u64) -> Result<Vec<Arc<WatchEvent>>, ApiError> {
        let st = self.lock();
        if rv >= st.p.rv {
            return Ok(Vec::new());
        }
        let oldest = st.history.front().map(|e| e.rv).unwrap_or(st.p.rv + 1);
        if rv + 1 < oldest {
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                oldest.saturating_sub(1)
            )));
        }
        Ok(st.history.iter().filter(|e| e.rv > rv).cloned().collect())
    }

    /// Extra persisted state for other parts of the stand-in (etcd members, allocations).
    pub fn extra(&self, key: &str) -> Option<Value> {
        self.lock().p.extra.get(key).cloned()
    }

    /// Set extra persisted state.
    pub fn set_extra(&self, key: &str, v: Value) {
        self.lock().p.extra.insert(key.to_string(), v);
        self.dirty.notify_one();
    }

    /// Get one object.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<Value> {
        let ns = if rt.namespaced { ns } else { "" };
        self.lock()
            .p
            .objects
            .get(&rt.key())
            .and_then(|m| m.get(&obj_key(ns, name)))
            .cloned()
    }

    /// List objects of a type (in one namespace or all), filtered by selectors.
    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> (Vec<Value>, u64) {
        let st = self.lock();
        let items =
            st.p.objects
                .get(&rt.key())
                .map(|m| {
                    m.values()
                        .filter(|o| {
                            ns.is_none_or(|n| meta_str(o, "namespace").unwrap_or_default() == n)
                        })
                        .filter(|o| labels.matches(o.pointer("/metadata/labels")))
                        .filter(|o| fields.matches(o))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
        (items, st.p.rv)
    }

    /// Every object of a type (controllers).
    pub fn all(&self, rt: &ResourceType) -> Vec<Value> {
        self.list(
            rt,
            None,
            &LabelSelector::default(),
            &FieldSelector::default(),
        )
        .0
    }

    fn admission_context(st: &State, params: &admission::ClusterParams) -> admission::Context {
        let mut used_ips = BTreeSet::new();
        let mut used_ports = BTreeSet::new();
        if let Some(svcs) = st.p.objects.get("core/services") {
            for s in svcs.values() {
                for ip in s
                    .pointer("/spec/clusterIPs")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(ip) = ip.as_str().and_then(|s| s.parse().ok()) {
                        used_ips.insert(ip);
                    }
                }
                for p in s
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(np) = p.get("nodePort").and_then(Value::as_u64) {
                        used_ports.insert(np as u16);
                    }
                }
            }
        }
        admission::Context {
            params: params.clone(),
            used_cluster_ips: used_ips,
            used_node_ports: used_ports,
        }
    }

    fn check_namespace(
        st: &State,
        rt: &ResourceType,
        ns: &str,
        creating: bool,
    ) -> Result<(), ApiError> {
        if !rt.namespaced {
            return Ok(());
        }
        let nsobj =
            st.p.objects
                .get("core/namespaces")
                .and_then(|m| m.get(&obj_key("", ns)));
        match nsobj {
            None => Err(ApiError::not_found(resources::core("namespaces"), ns)),
            Some(n) if creating && n.pointer("/metadata/deletionTimestamp").is_some() => {
                Err(ApiError::forbidden(format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {} because it is being terminated",
                    rt.plural,
                    n.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or(ns),
                    ns
                )))
            }
            _ => Ok(()),
        }
    }

    /// Decode through the typed model; returns warnings for dropped unknown fields, or the apply
    /// error for them.
    fn decode(
        rt: &ResourceType,
        v: &Value,
        apply: bool,
        strict: bool,
        name: &str,
        ns: &str,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let decoded = admission::typed_roundtrip(rt, v).map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                rt.kind, rt.version, rt.kind
            ))
        })?;
        let unknown = admission::unknown_fields(v, &decoded);
        if !unknown.is_empty() {
            if apply {
                return Err(typed_patch_error(rt, ns, name, &unknown));
            }
            if strict {
                return Err(ApiError::bad_request(format!(
                    "strict decoding error: {}",
                    unknown
                        .iter()
                        .map(|u| format!("unknown field \"{}\"", u.trim_start_matches('.')))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let warnings = unknown
                .iter()
                .map(|u| format!("unknown field \"{}\"", u.trim_start_matches('.')))
                .collect();
            return Ok((decoded, warnings));
        }
        Ok((decoded, Vec::new()))
    }

    /// Check an applied configuration: the merged object must decode, and every field the
    /// configuration sets must exist in the schema (`failed to create typed patch object`).
    fn decode_applied(
        rt: &ResourceType,
        applied: &Value,
        merged: &Value,
        name: &str,
        ns: &str,
    ) -> Result<Value, ApiError> {
        let decoded = admission::typed_roundtrip(rt, merged).map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                rt.kind, rt.version, rt.kind
            ))
        })?;
        let unknown = admission::unknown_fields(applied, &decoded);
        if !unknown.is_empty() {
            return Err(typed_patch_error(rt, ns, name, &unknown));
        }
        Ok(decoded)
    }

    fn record_manager(
        st: &mut State,
        uid: &str,
        manager: &str,
        operation: &str,
        api_version: &str,
        sub: Sub,
        fields: BTreeSet<FieldPath>,
    ) {
        if manager.is_empty() || fields.is_empty() {
            return;
        }
        let entries = st.p.managers.entry(uid.to_string()).or_default();
        // Fields now owned by this manager are released by other Update managers.
        if operation == "Update" {
            for e in entries.iter_mut() {
                if e.manager != manager {
                    e.fields.retain(|f| !fields.contains(f));
                }
            }
        }
        let subresource = if sub == Sub::Status { "status" } else { "" }.to_string();
        match entries.iter_mut().find(|e| {
            e.manager == manager && e.operation == operation && e.subresource == subresource
        }) {
            Some(e) => {
                if operation == "Apply" {
                    e.fields = fields;
                } else {
                    e.fields.extend(fields);
                }
                e.time = now();
            }
            None => entries.push(ManagerEntry {
                manager: manager.to_string(),
                operation: operation.to_string(),
                api_version: api_version.to_string(),
                time: now(),
                subresource,
                fields,
            }),
        }
        entries.retain(|e| !e.fields.is_empty());
    }

    fn render_managed_fields(st: &State, obj: &mut Value) {
        let uid = meta_str(obj, "uid").unwrap_or_default().to_string();
        let entries = st.p.managers.get(&uid).cloned().unwrap_or_default();
        let mf: Vec<Value> = entries
            .iter()
            .map(|e| {
                let mut v = json!({
                    "manager": e.manager,
                    "operation": e.operation,
                    "apiVersion": e.api_version,
                    "time": e.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": patch::fields_v1(&e.fields),
                });
                if !e.subresource.is_empty() {
                    v["subresource"] = json!(e.subresource);
                }
                v
            })
            .collect();
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            if mf.is_empty() {
                m.remove("managedFields");
            } else {
                m.insert("managedFields".into(), Value::Array(mf));
            }
        }
    }

    fn emit(&self, st: &mut State, kind: &'static str, rt: &ResourceType, obj: &Value) {
        self.emit_prev(st, kind, rt, obj, None)
    }

    fn emit_prev(
        &self,
        st: &mut State,
        kind: &'static str,
        rt: &ResourceType,
        obj: &Value,
        prev: Option<&Value>,
    ) {
        if self.trace.load(std::sync::atomic::Ordering::Relaxed) {
            let manager = obj
                .pointer("/metadata/managedFields")
                .and_then(Value::as_array)
                .and_then(|m| {
                    m.iter()
                        .max_by_key(|e| e["time"].as_str().unwrap_or_default().to_string())
                })
                .and_then(|e| e["manager"].as_str())
                .unwrap_or("-")
                .to_string();
            let changed: Vec<String> = match prev {
                Some(p) => patch::changed_fields(p, obj)
                    .into_iter()
                    .chain(patch::changed_fields(obj, p))
                    .map(|f| patch::path_string(&f))
                    .filter(|f| {
                        f != ".metadata.resourceVersion"
                            && !f.starts_with(".metadata.managedFields")
                    })
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .take(8)
                    .collect(),
                None => Vec::new(),
            };
            super::log::info(format!(
                "k3s-standin trace: {kind} {} {}/{} rv={} manager={manager} {}",
                rt.key(),
                meta_str(obj, "namespace").unwrap_or_default(),
                meta_str(obj, "name").unwrap_or_default(),
                st.p.rv,
                changed.join(" ")
            ));
        }
        let ev = Arc::new(WatchEvent {
            rv: st.p.rv,
            kind,
            type_key: rt.key(),
            namespace: meta_str(obj, "namespace").unwrap_or_default().to_string(),
            object: obj.clone(),
            prev: prev.cloned(),
        });
        st.history.push_back(ev.clone());
        while st.history.len() > HISTORY {
            st.history.pop_front();
        }
        let _ = self.tx.send(ev);
        self.dirty.notify_one();
    }

    /// Stamp identity fields and the apiVersion/kind onto a new object.
    fn new_meta(rt: &ResourceType, obj: &mut Value, ns: &str) -> Result<String, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be an object"));
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        let meta = &mut obj["metadata"];
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            if let Some(g) = meta.get("generateName").and_then(Value::as_str) {
                name = format!("{g}{}", name_suffix(5));
                meta["name"] = json!(name);
            } else {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    &[(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
        }
        if rt.namespaced {
            meta["namespace"] = json!(ns);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        meta["uid"] = json!(new_uid());
        meta["creationTimestamp"] = json!(now());
        if let Some(m) = meta.as_object_mut() {
            m.remove("resourceVersion");
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("managedFields");
            m.remove("selfLink");
        }
        if rt.generation {
            meta["generation"] = json!(1);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("generation");
        }
        Ok(name)
    }

    fn initial_status(rt: &ResourceType, obj: &mut Value) {
        if !rt.status || rt.plural == "namespaces" || rt.plural == "services" {
            return;
        }
        if rt.plural == "nodes" {
            // The kubelet registers its Node with status.
            return;
        }
        obj["status"] = match rt.plural {
            "pods" => json!({"phase": "Pending", "qosClass": "BestEffort"}),
            _ => json!({}),
        };
    }

    /// Create an object (POST, or an apply that finds nothing).
    pub fn create(
        &self,
        rt: &ResourceType,
        ns: &str,
        body: Value,
        opts: &WriteOpts,
    ) -> Result<Written, ApiError> {
        self.create_inner(rt, ns, body, opts, false)
    }

    fn create_inner(
        &self,
        rt: &ResourceType,
        ns: &str,
        mut body: Value,
        opts: &WriteOpts,
        apply: bool,
    ) -> Result<Written, ApiError> {
        let mut st = self.lock();
        let body_name = meta_str(&body, "name").unwrap_or_default().to_string();
        let (decoded, warnings) = Self::decode(rt, &body, apply, opts.strict, &body_name, ns)?;
        let applied_fields = patch::field_set(&decoded);
        body = decoded;
        let name = Self::new_meta(rt, &mut body, ns)?;
        Self::check_namespace(&st, rt, ns, true)?;
        let key = obj_key(if rt.namespaced { ns } else { "" }, &name);
        if st
            .p
            .objects
            .get(&rt.key())
            .is_some_and(|m| m.contains_key(&key))
        {
            return Err(ApiError::already_exists(rt, &name));
        }
        Self::initial_status(rt, &mut body);
        let ctx = Self::admission_context(&st, &self.params);
        admission::admit(&ctx, rt, admission::Op::Create, &mut body, None)?;
        if opts.dry_run {
            return Ok(Written {
                object: body,
                warnings,
                created: true,
            });
        }
        st.p.rv += 1;
        body["metadata"]["resourceVersion"] = json!(st.p.rv.to_string());
        let uid = meta_str(&body, "uid").unwrap_or_default().to_string();
        let op = if apply { "Apply" } else { "Update" };
        let fields: BTreeSet<FieldPath> = applied_fields
            .into_iter()
            .filter(|p| !matches!(p.first(), Some(patch::Seg::Field(f)) if f == "status" || f == "apiVersion" || f == "kind"))
            .filter(|p| !matches!(p.as_slice(), [patch::Seg::Field(a), patch::Seg::Field(b), ..] if a == "metadata" && (b == "name" || b == "namespace" || b == "uid" || b == "resourceVersion" || b == "creationTimestamp" || b == "generateName")))
            .collect();
        Self::record_manager(
            &mut st,
            &uid,
            &opts.manager,
            op,
            &rt.api_version(),
            Sub::Main,
            fields,
        );
        Self::render_managed_fields(&st, &mut body);
        st.p.objects
            .entry(rt.key())
            .or_default()
            .insert(key, body.clone());
        self.emit(&mut st, "ADDED", rt, &body);
        Ok(Written {
            object: body,
            warnings,
            created: true,
        })
    }

    /// Store `new` as the next version of an existing object (`old`), after admission.
    #[allow(clippy::too_many_arguments)]
    fn commit_update(
        &self,
        st: &mut State,
        rt: &ResourceType,
        old: &Value,
        mut new: Value,
        sub: Sub,
        opts: &WriteOpts,
        operation: &str,
        owned: Option<BTreeSet<FieldPath>>,
    ) -> Result<Value, ApiError> {
        let ns = meta_str(old, "namespace").unwrap_or_default().to_string();
        let name = meta_str(old, "name").unwrap_or_default().to_string();
        // Identity and server-managed metadata cannot be changed by clients.
        new["apiVersion"] = json!(rt.api_version());
        new["kind"] = json!(rt.kind);
        if !new.get("metadata").is_some_and(Value::is_object) {
            new["metadata"] = json!({});
        }
        for f in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old.get("metadata").and_then(|m| m.get(f)) {
                Some(v) => new["metadata"][f] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
        if rt.status {
            match sub {
                Sub::Main => match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                },
                Sub::Status => {
                    let status = new.get("status").cloned();
                    let mut merged = old.clone();
                    match status {
                        Some(s) => merged["status"] = s,
                        None => {
                            if let Some(m) = merged.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                    new = merged;
                }
            }
        }
        if sub == Sub::Main {
            let ctx = Self::admission_context(st, &self.params);
            admission::admit(&ctx, rt, admission::Op::Update, &mut new, Some(old))?;
        }
        if rt.generation && sub == Sub::Main && old.get("spec") != new.get("spec") {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1)
                + 1;
            new["metadata"]["generation"] = json!(g);
        }
        // A no-op write does not bump the resourceVersion (as the apiserver skips it).
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
                m.remove("managedFields");
            }
            v
        };
        let changed = strip(old) != strip(&new);
        let uid = meta_str(old, "uid").unwrap_or_default().to_string();
        let fields = match owned {
            Some(f) => f,
            None => patch::changed_fields(old, &new),
        };
        if opts.dry_run {
            return Ok(new);
        }
        Self::record_manager(
            st,
            &uid,
            &opts.manager,
            operation,
            &rt.api_version(),
            sub,
            fields,
        );
        if !changed {
            return Ok(old.clone());
        }
        st.p.rv += 1;
        new["metadata"]["resourceVersion"] = json!(st.p.rv.to_string());
        Self::render_managed_fields(st, &mut new);
        // Finalizers emptied on an object being deleted: remove it now.
        let deleting = new.pointer("/metadata/deletionTimestamp").is_some();
        let no_finalizers = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|a| a.is_empty());
        let key = obj_key(if rt.namespaced { &ns } else { "" }, &name);
        if deleting && no_finalizers && rt.plural != "pods" && rt.plural != "namespaces" {
            if let Some(m) = st.p.objects.get_mut(&rt.key()) {
                m.remove(&key);
            }
            st.p.managers.remove(&uid);
            self.emit(st, "DELETED", rt, &new);
            return Ok(new);
        }
        st.p.objects
            .entry(rt.key())
            .or_default()
            .insert(key, new.clone());
        self.emit_prev(st, "MODIFIED", rt, &new, Some(old));
        Ok(new)
    }

    /// Replace an object (PUT), with optimistic concurrency on `metadata.resourceVersion`.
    pub fn replace(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        body: Value,
        sub: Sub,
        opts: &WriteOpts,
    ) -> Result<Written, ApiError> {
        let (decoded, warnings) = Self::decode(rt, &body, false, opts.strict, name, ns)?;
        let mut st = self.lock();
        let ns = if rt.namespaced { ns } else { "" };
        let Some(old) =
            st.p.objects
                .get(&rt.key())
                .and_then(|m| m.get(&obj_key(ns, name)))
                .cloned()
        else {
            return Err(ApiError::not_found(rt, name));
        };
        if let Some(bn) = meta_str(&decoded, "name")
            && bn != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({bn}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(rv) = meta_str(&decoded, "resourceVersion")
            && !rv.is_empty()
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(rt, name));
        }
        let obj = self.commit_update(&mut st, rt, &old, decoded, sub, opts, "Update", None)?;
        Ok(Written {
            object: obj,
            warnings,
            created: false,
        })
    }

    /// Patch an object; an apply patch creates it when it does not exist.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &Value,
        sub: Sub,
        opts: &WriteOpts,
    ) -> Result<Written, ApiError> {
        let existing = self.get(rt, ns, name);
        let Some(old) = existing else {
            if kind == PatchKind::Apply && sub == Sub::Main {
                if let Some(bn) = meta_str(body, "name")
                    && bn != name
                {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({bn}) does not match the name on the URL ({name})"
                    )));
                }
                let mut b = body.clone();
                if !b.get("metadata").is_some_and(Value::is_object) {
                    b["metadata"] = json!({});
                }
                b["metadata"]["name"] = json!(name);
                return self.create_inner(rt, ns, b, opts, true);
            }
            return Err(ApiError::not_found(rt, name));
        };
        let mut warnings = Vec::new();
        let (new, owned, operation) = match kind {
            PatchKind::Merge | PatchKind::Strategic | PatchKind::Json => {
                let mut v = old.clone();
                match kind {
                    PatchKind::Merge => patch::merge_patch(&mut v, body),
                    PatchKind::Strategic => patch::strategic_merge_patch(&mut v, body),
                    _ => patch::json_patch(&mut v, body).map_err(|e| {
                        ApiError::bad_request(format!(
                            "the server rejected our request due to an error in our request: {e}"
                        ))
                    })?,
                }
                if let Some(rv) = body
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    && Some(rv) != meta_str(&old, "resourceVersion")
                {
                    return Err(ApiError::conflict(rt, name));
                }
                let (decoded, w) = Self::decode(rt, &v, false, opts.strict, name, ns)?;
                warnings = w;
                (decoded, None, "Update")
            }
            PatchKind::Apply => {
                if let Some(bn) = meta_str(body, "name")
                    && bn != name
                {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({bn}) does not match the name on the URL ({name})"
                    )));
                }
                let st = self.lock();
                let uid = meta_str(&old, "uid").unwrap_or_default().to_string();
                let entries = st.p.managers.get(&uid).cloned().unwrap_or_default();
                drop(st);
                let sub_name = if sub == Sub::Status { "status" } else { "" };
                let prev: BTreeSet<FieldPath> = entries
                    .iter()
                    .filter(|e| {
                        e.manager == opts.manager
                            && e.operation == "Apply"
                            && e.subresource == sub_name
                    })
                    .flat_map(|e| e.fields.iter().cloned())
                    .collect();
                // The applied configuration may be partial (SSA allows that), so it is checked
                // against the schema only after merging into the live object.
                let mut applied = body.clone();
                if !applied.is_object() {
                    return Err(ApiError::bad_request("the apply patch must be an object"));
                }
                if let Some(m) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
                    for f in [
                        "uid",
                        "resourceVersion",
                        "creationTimestamp",
                        "managedFields",
                        "generation",
                    ] {
                        m.remove(f);
                    }
                }
                if !opts.force {
                    let others: Vec<(&str, &BTreeSet<FieldPath>)> = entries
                        .iter()
                        .filter(|e| e.manager != opts.manager && e.subresource == sub_name)
                        .map(|e| (e.manager.as_str(), &e.fields))
                        .collect();
                    let c = patch::conflicts(&old, &applied, others.into_iter());
                    if !c.is_empty() {
                        return Err(ApiError::apply_conflicts(&c, &rt.api_version()));
                    }
                }
                let merged = patch::apply(&old, &applied, &prev);
                let merged = Self::decode_applied(rt, &applied, &merged, name, ns)?;
                let owned: BTreeSet<FieldPath> = patch::field_set(&applied)
                    .into_iter()
                    .filter(|p| !matches!(p.first(), Some(patch::Seg::Field(f)) if f == "apiVersion" || f == "kind"))
                    .filter(|p| sub == Sub::Status || !matches!(p.first(), Some(patch::Seg::Field(f)) if f == "status"))
                    .filter(|p| !matches!(p.as_slice(), [patch::Seg::Field(a), patch::Seg::Field(b), ..] if a == "metadata" && (b == "name" || b == "namespace")))
                    .collect();
                if opts.force {
                    // Forced: other managers lose the fields this apply takes.
                    let mut st = self.lock();
                    if let Some(es) = st.p.managers.get_mut(&uid) {
                        for e in es.iter_mut() {
                            if e.manager != opts.manager {
                                e.fields.retain(|f| !owned.contains(f));
                            }
                        }
                        es.retain(|e| !e.fields.is_empty());
                    }
                }
                (merged, Some(owned), "Apply")
            }
        };
        let mut st = self.lock();
        // Re-read under the lock: a concurrent write wins if it happened in between.
        let current =
            st.p.objects
                .get(&rt.key())
                .and_then(|m| m.get(&obj_key(if rt.namespaced { ns } else { "" }, name)))
                .cloned();
        let Some(current) = current else {
            return Err(ApiError::not_found(rt, name));
        };
        if meta_str(&current, "resourceVersion") != meta_str(&old, "resourceVersion") {
            drop(st);
            return self.patch(rt, ns, name, kind, body, sub, opts);
        }
        let obj = self.commit_update(&mut st, rt, &old, new, sub, opts, operation, owned)?;
        Ok(Written {
            object: obj,
            warnings,
            created: false,
        })
    }

    /// Internal read-modify-write by controllers and the kubelet: `f` edits the object; nothing is
    /// written if it did not change. Returns the stored object.
    pub fn update_with(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        sub: Sub,
        manager: &str,
        f: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let ns = if rt.namespaced { ns } else { "" };
        let Some(old) =
            st.p.objects
                .get(&rt.key())
                .and_then(|m| m.get(&obj_key(ns, name)))
                .cloned()
        else {
            return Err(ApiError::not_found(rt, name));
        };
        let mut new = old.clone();
        f(&mut new);
        if new == old {
            return Ok(old);
        }
        let opts = WriteOpts {
            manager: manager.to_string(),
            ..Default::default()
        };
        self.commit_update(&mut st, rt, &old, new, sub, &opts, "Update", None)
    }

    /// Delete an object.
    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Deleted, ApiError> {
        let mut st = self.lock();
        let ns = if rt.namespaced { ns } else { "" };
        let key = obj_key(ns, name);
        let Some(old) =
            st.p.objects
                .get(&rt.key())
                .and_then(|m| m.get(&key))
                .cloned()
        else {
            return Err(ApiError::not_found(rt, name));
        };
        if let Some(uid) = &opts.precondition_uid
            && Some(uid.as_str()) != meta_str(&old, "uid")
        {
            return Err(ApiError::conflict(rt, name));
        }
        if opts.dry_run {
            return Ok(Deleted::Gone(old));
        }
        let uid = meta_str(&old, "uid").unwrap_or_default().to_string();
        let propagation = opts
            .propagation
            .clone()
            .unwrap_or_else(|| "Background".to_string());
        if propagation == "Orphan" {
            let mut orphaned = Vec::new();
            for (tk, objs) in st.p.objects.iter_mut() {
                for o in objs.values_mut() {
                    let refs = o
                        .pointer_mut("/metadata/ownerReferences")
                        .and_then(Value::as_array_mut);
                    if let Some(refs) = refs {
                        let before = refs.len();
                        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()));
                        if refs.len() != before {
                            orphaned.push((tk.clone(), o.clone()));
                        }
                    }
                }
            }
            for (tk, mut o) in orphaned {
                st.p.rv += 1;
                o["metadata"]["resourceVersion"] = json!(st.p.rv.to_string());
                let k = obj_key(
                    meta_str(&o, "namespace").unwrap_or_default(),
                    meta_str(&o, "name").unwrap_or_default(),
                );
                if let Some(m) = st.p.objects.get_mut(&tk) {
                    m.insert(k, o.clone());
                }
                if let Some(ort) = resources::RESOURCES.iter().find(|r| r.key() == tk) {
                    self.emit(&mut st, "MODIFIED", ort, &o);
                }
            }
        }
        let mut finalizers: Vec<String> = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if propagation == "Foreground" && !finalizers.iter().any(|f| f == "foregroundDeletion") {
            finalizers.push("foregroundDeletion".into());
        }
        let is_pod = rt.key() == "core/pods";
        let bound = old
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let pod_done = matches!(
            old.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded") | Some("Failed")
        );
        let grace = opts.grace_seconds.unwrap_or_else(|| {
            old.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30)
        });
        let graceful_pod = is_pod && bound && grace > 0 && !pod_done;
        let is_ns = rt.key() == "core/namespaces";
        if !finalizers.is_empty() || graceful_pod || is_ns {
            let mut new = old.clone();
            if new.pointer("/metadata/deletionTimestamp").is_none() {
                let ts = if graceful_pod {
                    jiff::Timestamp::now()
                        .checked_add(jiff::SignedDuration::from_secs(grace))
                        .map(|t| {
                            jiff::Timestamp::from_second(t.as_second())
                                .map(|x| x.to_string())
                                .unwrap_or_default()
                        })
                        .unwrap_or_else(|_| now())
                } else {
                    now()
                };
                new["metadata"]["deletionTimestamp"] = json!(ts);
                new["metadata"]["deletionGracePeriodSeconds"] =
                    json!(if graceful_pod { grace } else { 0 });
            } else if is_pod && opts.grace_seconds == Some(0) {
                // Force deletion of a terminating pod.
                if let Some(m) = st.p.objects.get_mut(&rt.key()) {
                    m.remove(&key);
                }
                st.p.managers.remove(&uid);
                st.p.rv += 1;
                self.emit(&mut st, "DELETED", rt, &old);
                return Ok(Deleted::Gone(old));
            }
            if !finalizers.is_empty() {
                new["metadata"]["finalizers"] = json!(finalizers);
            }
            if is_ns {
                new["status"]["phase"] = json!("Terminating");
            }
            if new == old {
                return Ok(Deleted::Pending(old));
            }
            st.p.rv += 1;
            new["metadata"]["resourceVersion"] = json!(st.p.rv.to_string());
            st.p.objects
                .entry(rt.key())
                .or_default()
                .insert(key, new.clone());
            self.emit_prev(&mut st, "MODIFIED", rt, &new, Some(&old));
            return Ok(Deleted::Pending(new));
        }
        if let Some(m) = st.p.objects.get_mut(&rt.key()) {
            m.remove(&key);
        }
        st.p.managers.remove(&uid);
        st.p.rv += 1;
        let mut gone = old.clone();
        gone["metadata"]["resourceVersion"] = json!(st.p.rv.to_string());
        self.emit(&mut st, "DELETED", rt, &gone);
        Ok(Deleted::Gone(gone))
    }

    /// Remove an object immediately, whatever its finalizers or grace (the kubelet confirming a
    /// pod's termination, the namespace controller finishing).
    pub fn remove(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<Value> {
        let mut st = self.lock();
        let ns = if rt.namespaced { ns } else { "" };
        let old =
            st.p.objects
                .get_mut(&rt.key())
                .and_then(|m| m.remove(&obj_key(ns, name)))?;
        let uid = meta_str(&old, "uid").unwrap_or_default().to_string();
        st.p.managers.remove(&uid);
        st.p.rv += 1;
        let mut gone = old;
        gone["metadata"]["resourceVersion"] = json!(st.p.rv.to_string());
        self.emit(&mut st, "DELETED", rt, &gone);
        Some(gone)
    }

    /// Create an object as a controller would (manager given), ignoring AlreadyExists.
    pub fn ensure(
        &self,
        rt: &ResourceType,
        ns: &str,
        body: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let name = meta_str(&body, "name").unwrap_or_default().to_string();
        if !name.is_empty()
            && let Some(v) = self.get(rt, ns, &name)
        {
            return Ok(v);
        }
        let opts = WriteOpts {
            manager: manager.to_string(),
            ..Default::default()
        };
        match self.create(rt, ns, body, &opts) {
            Ok(w) => Ok(w.object),
            Err(e) if e.reason == "AlreadyExists" => self.get(rt, ns, &name).ok_or(e),
            Err(e) => Err(e),
        }
    }
}

/// The apiserver's answer to an applied or submitted object with fields its schema does not
/// declare (structured-merge-diff's "failed to create typed patch object").
fn typed_patch_error(rt: &ResourceType, ns: &str, name: &str, unknown: &[String]) -> ApiError {
    let gv = if rt.group.is_empty() {
        format!("/{}", rt.version)
    } else {
        rt.api_version()
    };
    let msg = if unknown.len() == 1 {
        format!("{}: field not declared in schema", unknown[0])
    } else {
        format!(
            "errors:\n{}",
            unknown
                .iter()
                .map(|u| format!("  {u}: field not declared in schema"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    ApiError::internal(format!(
        "failed to create typed patch object ({ns}/{name}; {gv}, Kind={}): {msg}",
        rt.kind
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Arc<Store> {
        let s = Store::open(None, admission::ClusterParams::default()).unwrap();
        s.create(
            resources::core("namespaces"),
            "",
            json!({"metadata": {"name": "default"}}),
            &WriteOpts::default(),
        )
        .unwrap();
        s
    }

    fn opts(m: &str) -> WriteOpts {
        WriteOpts {
            manager: m.into(),
            ..Default::default()
        }
    }

    #[test]
    fn create_get_list_delete() {
        let s = store();
        let cm = resources::core("configmaps");
        let w = s
            .create(
                cm,
                "default",
                json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}}),
                &opts("t"),
            )
            .unwrap();
        assert_eq!(w.object["kind"], "ConfigMap");
        assert!(w.object.pointer("/metadata/uid").is_some());
        let e = s
            .create(
                cm,
                "default",
                json!({"metadata": {"name": "a"}}),
                &opts("t"),
            )
            .unwrap_err();
        assert_eq!(e.code, 409);
        assert_eq!(e.message, "configmaps \"a\" already exists");
        let (items, _) = s.list(
            cm,
            Some("default"),
            &LabelSelector::parse("x=1").unwrap(),
            &FieldSelector::default(),
        );
        assert_eq!(items.len(), 1);
        assert!(matches!(
            s.delete(cm, "default", "a", &DeleteOpts::default())
                .unwrap(),
            Deleted::Gone(_)
        ));
        assert_eq!(s.get(cm, "default", "a"), None);
        let e = s
            .create(cm, "nope", json!({"metadata": {"name": "a"}}), &opts("t"))
            .unwrap_err();
        assert_eq!(e.message, "namespaces \"nope\" not found");
    }

    #[test]
    fn apply_bumps_generation_only_on_spec_change() {
        let s = store();
        let d = resources::apps("deployments");
        let body = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}});
        let w = s
            .patch(
                d,
                "default",
                "web",
                PatchKind::Apply,
                &body,
                Sub::Main,
                &opts("installer"),
            )
            .unwrap();
        assert!(w.created);
        assert_eq!(w.object["metadata"]["generation"], 1);
        assert_eq!(w.object["spec"]["replicas"], 1);
        let rv1 = w.object["metadata"]["resourceVersion"].clone();
        let w = s
            .patch(
                d,
                "default",
                "web",
                PatchKind::Apply,
                &body,
                Sub::Main,
                &opts("installer"),
            )
            .unwrap();
        assert_eq!(w.object["metadata"]["generation"], 1);
        assert_eq!(w.object["metadata"]["resourceVersion"], rv1);
        let mut b2 = body.clone();
        b2["spec"]["template"]["spec"]["containers"][0]["image"] = json!("x:2");
        let w = s
            .patch(
                d,
                "default",
                "web",
                PatchKind::Apply,
                &b2,
                Sub::Main,
                &opts("installer"),
            )
            .unwrap();
        assert_eq!(w.object["metadata"]["generation"], 2);
        assert_eq!(
            w.object["metadata"]["managedFields"][0]["manager"],
            "installer"
        );
    }

    #[test]
    fn apply_conflicts_without_force() {
        let s = store();
        let cm = resources::core("configmaps");
        s.patch(
            cm,
            "default",
            "c",
            PatchKind::Apply,
            &json!({"metadata": {"name": "c"}, "data": {"a": "1"}}),
            Sub::Main,
            &opts("one"),
        )
        .unwrap();
        let e = s
            .patch(
                cm,
                "default",
                "c",
                PatchKind::Apply,
                &json!({"metadata": {"name": "c"}, "data": {"a": "2"}}),
                Sub::Main,
                &opts("two"),
            )
            .unwrap_err();
        assert_eq!(e.code, 409);
        assert_eq!(
            e.message,
            "Apply failed with 1 conflict: conflict with \"one\" using v1: .data.a"
        );
        let mut forced = opts("two");
        forced.force = true;
        let w = s
            .patch(
                cm,
                "default",
                "c",
                PatchKind::Apply,
                &json!({"metadata": {"name": "c"}, "data": {"a": "2"}}),
                Sub::Main,
                &forced,
            )
            .unwrap();
        assert_eq!(w.object["data"]["a"], "2");
    }

    #[test]
    fn apply_rejects_unknown_fields_like_the_apiserver() {
        let s = store();
        let cm = resources::core("configmaps");
        let e = s
            .patch(
                cm,
                "default",
                "c",
                PatchKind::Apply,
                &json!({"metadata": {"name": "c"}, "dat": {"a": "1"}}),
                Sub::Main,
                &opts("one"),
            )
            .unwrap_err();
        assert_eq!(e.code, 500);
        assert_eq!(
            e.message,
            "failed to create typed patch object (default/c; /v1, Kind=ConfigMap): .dat: field not declared in schema"
        );
    }

    #[test]
    fn a_partial_apply_updates_only_its_fields() {
        let s = store();
        let d = resources::apps("deployments");
        let body = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}});
        s.patch(
            d,
            "default",
            "web",
            PatchKind::Apply,
            &body,
            Sub::Main,
            &opts("installer"),
        )
        .unwrap();
        let partial = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "annotations": {"note": "x"}}});
        let w = s
            .patch(
                d,
                "default",
                "web",
                PatchKind::Apply,
                &partial,
                Sub::Main,
                &opts("annotator"),
            )
            .unwrap();
        assert_eq!(w.object["metadata"]["annotations"]["note"], "x");
        assert_eq!(w.object["spec"]["replicas"], 2);
        let bad = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicaz": 3}});
        let e = s
            .patch(
                d,
                "default",
                "web",
                PatchKind::Apply,
                &bad,
                Sub::Main,
                &opts("annotator"),
            )
            .unwrap_err();
        assert_eq!(
            e.message,
            "failed to create typed patch object (default/web; apps/v1, Kind=Deployment): .spec.replicaz: field not declared in schema"
        );
    }

    #[test]
    fn status_is_separate_from_spec() {
        let s = store();
        let d = resources::apps("deployments");
        let body = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}, "status": {"replicas": 9}});
        let w = s.create(d, "default", body, &opts("t")).unwrap();
        assert_eq!(w.object["status"], json!({}));
        s.update_with(
            d,
            "default",
            "web",
            Sub::Status,
            "deployment-controller",
            |o| o["status"]["replicas"] = json!(1),
        )
        .unwrap();
        let mut b = s.get(d, "default", "web").unwrap();
        b["status"]["replicas"] = json!(5);
        let w = s
            .replace(d, "default", "web", b, Sub::Main, &opts("t"))
            .unwrap();
        assert_eq!(w.object["status"]["replicas"], 1);
    }

    #[test]
    fn watch_history_and_expiry() {
        let s = store();
        let cm = resources::core("configmaps");
        let rv0 = s.resource_version();
        s.create(
            cm,
            "default",
            json!({"metadata": {"name": "a"}}),
            &opts("t"),
        )
        .unwrap();
        let ev = s.events_since(rv0).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].kind, "ADDED");
    }

    #[test]
    fn graceful_pod_deletion_waits_for_the_kubelet() {
        let s = store();
        let p = resources::core("pods");
        s.create(p, "default", json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x:1"}]}}), &opts("t"))
            .unwrap();
        assert!(matches!(
            s.delete(p, "default", "p", &DeleteOpts::default()).unwrap(),
            Deleted::Pending(_)
        ));
        let pod = s.get(p, "default", "p").unwrap();
        assert!(pod.pointer("/metadata/deletionTimestamp").is_some());
        assert!(s.remove(p, "default", "p").is_some());
    }

    #[test]
    fn persists_and_reloads() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.json");
        {
            let s = Store::open(Some(path.clone()), admission::ClusterParams::default()).unwrap();
            s.create(
                resources::core("namespaces"),
                "",
                json!({"metadata": {"name": "x"}}),
                &WriteOpts::default(),
            )
            .unwrap();
            s.flush().unwrap();
        }
        let s = Store::open(Some(path), admission::ClusterParams::default()).unwrap();
        assert!(s.get(resources::core("namespaces"), "", "x").is_some());
        assert!(s.resource_version() > 0);
    }
}

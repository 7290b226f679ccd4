//! `reefctl get|apply|delete`: Reef resources in the etcd datastore, validated before every write.

use std::path::{Path, PathBuf};

use anyhow::Context;
use reef_crds::{
    BGPConfiguration, BGPFilter, BGPPeer, BlockAffinity, GlobalNetworkPolicy, IPAMBlock,
    IPAMConfig, IPAMHandle, IPPool, NetworkPolicy, ReefNode, Validate, WorkloadEndpoint,
};
use reef_datastore::{Datastore, Object, Revision};
use serde_json::{Value, json};

use crate::etcd::EtcdArgs;
use crate::exit::{Classified, Failure};
use crate::output::{Format, cell, structured, table};

/// The API version of every Reef resource.
const API_VERSION: &str = "reef.dev/v1";
/// Namespace of a namespaced kind when none is given (as kubectl).
const DEFAULT_NAMESPACE: &str = "default";
/// Metadata the datastore sets: kept on update when the file has none.
const SERVER_SET_METADATA: [&str; 3] = ["creationTimestamp", "uid", "generation"];
/// What `get` prints instead of a secret's value.
const REDACTED: &str = "<redacted>";

/// Every Reef resource kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    BGPConfiguration,
    BGPPeer,
    BGPFilter,
    IPPool,
    IPAMConfig,
    IPAMBlock,
    BlockAffinity,
    IPAMHandle,
    ReefNode,
    WorkloadEndpoint,
    NetworkPolicy,
    GlobalNetworkPolicy,
}

/// Runs `$body` with `$K` the resource type of `$kind`.
macro_rules! with_kind {
    ($kind:expr, $K:ident => $body:expr) => {
        match $kind {
            Kind::BGPConfiguration => {
                type $K = BGPConfiguration;
                $body
            }
            Kind::BGPPeer => {
                type $K = BGPPeer;
                $body
            }
            Kind::BGPFilter => {
                type $K = BGPFilter;
                $body
            }
            Kind::IPPool => {
                type $K = IPPool;
                $body
            }
            Kind::IPAMConfig => {
                type $K = IPAMConfig;
                $body
            }
            Kind::IPAMBlock => {
                type $K = IPAMBlock;
                $body
            }
            Kind::BlockAffinity => {
                type $K = BlockAffinity;
                $body
            }
            Kind::IPAMHandle => {
                type $K = IPAMHandle;
                $body
            }
            Kind::ReefNode => {
                type $K = ReefNode;
                $body
            }
            Kind::WorkloadEndpoint => {
                type $K = WorkloadEndpoint;
                $body
            }
            Kind::NetworkPolicy => {
                type $K = NetworkPolicy;
                $body
            }
            Kind::GlobalNetworkPolicy => {
                type $K = GlobalNetworkPolicy;
                $body
            }
        }
    };
}

/// A table column: header and how to read the cell from the object's JSON.
type Column = (&'static str, fn(&Value) -> String);

/// The cell at a path of keys.
fn at(value: &Value, path: &[&str]) -> String {
    cell(path.iter().try_fold(value, |v, key| v.get(*key)))
}

/// How many rules/items a list field has.
fn count(value: &Value, path: &[&str]) -> String {
    path.iter()
        .try_fold(value, |v, key| v.get(*key))
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
        .to_string()
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::BGPConfiguration,
        Kind::BGPPeer,
        Kind::BGPFilter,
        Kind::IPPool,
        Kind::IPAMConfig,
        Kind::IPAMBlock,
        Kind::BlockAffinity,
        Kind::IPAMHandle,
        Kind::ReefNode,
        Kind::WorkloadEndpoint,
        Kind::NetworkPolicy,
        Kind::GlobalNetworkPolicy,
    ];

    /// The `kind` field, e.g. `BGPPeer`.
    pub fn name(self) -> String {
        with_kind!(self, K => <K as kube::Resource>::kind(&()).into_owned())
    }

    /// The plural resource name, e.g. `bgppeers`.
    pub fn plural(self) -> String {
        with_kind!(self, K => <K as kube::Resource>::plural(&()).into_owned())
    }

    pub fn namespaced(self) -> bool {
        matches!(self, Kind::WorkloadEndpoint | Kind::NetworkPolicy)
    }

    /// The kind for a name as typed: the kind, its plural or a short name, in any case.
    pub fn parse(text: &str) -> Option<Kind> {
        let text = text.to_ascii_lowercase();
        let short = match text.as_str() {
            "pool" | "pools" => Some(Kind::IPPool),
            "node" | "nodes" => Some(Kind::ReefNode),
            "wep" | "weps" => Some(Kind::WorkloadEndpoint),
            "policy" | "policies" | "netpol" => Some(Kind::NetworkPolicy),
            "gnp" => Some(Kind::GlobalNetworkPolicy),
            "affinity" | "affinities" => Some(Kind::BlockAffinity),
            "block" | "blocks" => Some(Kind::IPAMBlock),
            "handle" | "handles" => Some(Kind::IPAMHandle),
            "peer" | "peers" => Some(Kind::BGPPeer),
            "filter" | "filters" => Some(Kind::BGPFilter),
            _ => None,
        };
        short.or_else(|| {
            Kind::ALL
                .into_iter()
                .find(|kind| kind.name().to_ascii_lowercase() == text || kind.plural() == text)
        })
    }

    fn all_names() -> String {
        Kind::ALL.map(Kind::name).join(", ")
    }

    /// The columns of `reefctl get KIND` after NAME (and NAMESPACE).
    fn columns(self) -> Vec<Column> {
        match self {
            Kind::BGPConfiguration => vec![
                ("AS", |o| at(o, &["spec", "asNumber"])),
                ("MESH", |o| at(o, &["spec", "nodeToNodeMeshEnabled"])),
                ("LISTEN PORT", |o| at(o, &["spec", "listenPort"])),
            ],
            Kind::BGPPeer => vec![
                ("PEER IP", |o| at(o, &["spec", "peerIP"])),
                ("AS", |o| at(o, &["spec", "asNumber"])),
                ("NODE", |o| at(o, &["spec", "node"])),
                ("NODE SELECTOR", |o| at(o, &["spec", "nodeSelector"])),
                ("PEER SELECTOR", |o| at(o, &["spec", "peerSelector"])),
                ("PASSWORD", |o| {
                    match at(o, &["spec", "password", "secretKeyRef", "name"]).as_str() {
                        "-" => "-".into(),
                        secret => format!("secret {secret}"),
                    }
                }),
            ],
            Kind::BGPFilter => vec![
                ("IMPORT V4", |o| count(o, &["spec", "importV4"])),
                ("EXPORT V4", |o| count(o, &["spec", "exportV4"])),
                ("IMPORT V6", |o| count(o, &["spec", "importV6"])),
                ("EXPORT V6", |o| count(o, &["spec", "exportV6"])),
            ],
            Kind::IPPool => vec![
                ("CIDR", |o| at(o, &["spec", "cidr"])),
                ("BLOCK SIZE", |o| at(o, &["spec", "blockSize"])),
                ("VXLAN", |o| at(o, &["spec", "vxlanMode"])),
                ("NAT", |o| at(o, &["spec", "natOutgoing"])),
                ("DISABLED", |o| at(o, &["spec", "disabled"])),
                ("NODE SELECTOR", |o| at(o, &["spec", "nodeSelector"])),
            ],
            Kind::IPAMConfig => vec![
                ("STRICT AFFINITY", |o| at(o, &["spec", "strictAffinity"])),
                ("MAX BLOCKS PER HOST", |o| {
                    at(o, &["spec", "maxBlocksPerHost"])
                }),
            ],
            Kind::IPAMBlock => vec![
                ("CIDR", |o| at(o, &["spec", "cidr"])),
                ("AFFINITY", |o| at(o, &["spec", "affinity"])),
                ("ALLOCATED", |o| {
                    o.pointer("/spec/allocations")
                        .and_then(Value::as_array)
                        .map_or(0, |a| a.iter().filter(|x| !x.is_null()).count())
                        .to_string()
                }),
            ],
            Kind::BlockAffinity => vec![
                ("NODE", |o| at(o, &["spec", "node"])),
                ("CIDR", |o| at(o, &["spec", "cidr"])),
                ("STATE", |o| at(o, &["spec", "state"])),
            ],
            Kind::IPAMHandle => vec![
                ("HANDLE ID", |o| at(o, &["spec", "handleID"])),
                ("BLOCKS", |o| {
                    o.pointer("/spec/block")
                        .and_then(Value::as_object)
                        .map_or(0, |b| b.len())
                        .to_string()
                }),
            ],
            Kind::ReefNode => vec![
                ("IPV4", |o| at(o, &["spec", "bgp", "ipv4Address"])),
                ("IPV6", |o| at(o, &["spec", "bgp", "ipv6Address"])),
                ("AS", |o| at(o, &["spec", "bgp", "asNumber"])),
                ("SESSIONS", |o| at(o, &["status", "sessionSummary"])),
                ("ROUTES", |o| at(o, &["status", "programmedRoutes"])),
                ("LAST ERROR", |o| at(o, &["status", "lastError"])),
            ],
            Kind::WorkloadEndpoint => vec![
                ("NODE", |o| at(o, &["spec", "node"])),
                ("INTERFACE", |o| at(o, &["spec", "interfaceName"])),
                ("IPS", |o| at(o, &["spec", "ipNetworks"])),
            ],
            Kind::NetworkPolicy | Kind::GlobalNetworkPolicy => vec![
                ("ORDER", |o| at(o, &["spec", "order"])),
                ("SELECTOR", |o| at(o, &["spec", "selector"])),
                ("TYPES", |o| at(o, &["spec", "types"])),
            ],
        }
    }
}

#[derive(clap::Args)]
pub struct GetArgs {
    /// Resource kind (e.g. ippool, bgppeers, BGPPeer); not with -f.
    #[arg(required_unless_present = "filename", conflicts_with = "filename")]
    kind: Option<String>,
    /// One object's name; all objects of the kind without it.
    name: Option<String>,
    /// Get the objects named in this YAML file (`-` = standard input).
    #[arg(short = 'f', long = "filename")]
    filename: Option<PathBuf>,
    #[command(flatten)]
    scope: NamespaceArgs,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Format,
    #[command(flatten)]
    etcd: EtcdArgs,
}

#[derive(clap::Args)]
pub struct ApplyArgs {
    /// YAML file with one or more documents (`---`), or `kind: List` (`-` = standard input).
    #[arg(short = 'f', long = "filename", required = true)]
    filename: PathBuf,
    #[command(flatten)]
    scope: NamespaceArgs,
    #[command(flatten)]
    etcd: EtcdArgs,
}

#[derive(clap::Args)]
pub struct DeleteArgs {
    /// Resource kind; not with -f.
    #[arg(required_unless_present = "filename", conflicts_with = "filename")]
    kind: Option<String>,
    /// The object's name (with KIND).
    #[arg(requires = "kind")]
    name: Option<String>,
    /// Delete the objects named in this YAML file (`-` = standard input).
    #[arg(short = 'f', long = "filename")]
    filename: Option<PathBuf>,
    /// Succeed when an object does not exist.
    #[arg(long)]
    ignore_not_found: bool,
    #[command(flatten)]
    scope: NamespaceArgs,
    #[command(flatten)]
    etcd: EtcdArgs,
}

#[derive(clap::Args)]
struct NamespaceArgs {
    /// Namespace of namespaced kinds (WorkloadEndpoint, NetworkPolicy).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// List namespaced kinds in every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    all_namespaces: bool,
}

/// One object named by a file or the command line.
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = self.kind.name().to_ascii_lowercase();
        match &self.namespace {
            Some(namespace) => write!(f, "{kind} {namespace}/{}", self.name),
            None => write!(f, "{kind} {}", self.name),
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub fn get(args: GetArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let datastore = args.etcd.connect().await?;
        let objects = match (&args.filename, &args.kind) {
            (Some(path), _) => {
                let mut objects = Vec::new();
                for document in read_documents(path)? {
                    let target = target_of(&document, &args.scope)?;
                    objects.push(get_one(&datastore, &target).await?);
                }
                Output::List(objects)
            }
            (None, Some(kind)) => {
                let kind = parse_kind(kind)?;
                match &args.name {
                    Some(name) => {
                        let target = Target {
                            kind,
                            namespace: args.scope.namespace_for(kind),
                            name: name.clone(),
                        };
                        Output::One(get_one(&datastore, &target).await?)
                    }
                    None => {
                        let namespace = if args.scope.all_namespaces {
                            None
                        } else {
                            args.scope.namespace_for(kind)
                        };
                        Output::List(list(&datastore, kind, namespace.as_deref()).await?)
                    }
                }
            }
            (None, None) => unreachable!("clap requires KIND or -f"),
        };
        print!("{}", render(objects, args.output)?);
        Ok(())
    })
}

/// What `get` read: one named object, or a list.
enum Output {
    One(Value),
    List(Vec<Value>),
}

fn render(output: Output, format: Format) -> anyhow::Result<String> {
    let redact_all = |mut objects: Vec<Value>| {
        objects.iter_mut().for_each(redact);
        objects
    };
    match (output, format) {
        (Output::One(object), Format::Table) => Ok(objects_table(&redact_all(vec![object]))),
        (Output::List(objects), Format::Table) => Ok(objects_table(&redact_all(objects))),
        (Output::One(mut object), format) => {
            redact(&mut object);
            structured(&object, format)
        }
        (Output::List(objects), format) => structured(
            &json!({ "apiVersion": "v1", "kind": "List", "items": redact_all(objects) }),
            format,
        ),
    }
}

/// One table per kind, in the order the kinds first appear.
fn objects_table(objects: &[Value]) -> String {
    if objects.is_empty() {
        return "no resources found\n".to_string();
    }
    let mut kinds: Vec<Kind> = Vec::new();
    for kind in objects
        .iter()
        .filter_map(|o| Kind::parse(o["kind"].as_str()?))
    {
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    let mut out = String::new();
    for kind in kinds {
        let of_kind: Vec<&Value> = objects
            .iter()
            .filter(|o| o["kind"].as_str().and_then(Kind::parse) == Some(kind))
            .collect();
        let columns = kind.columns();
        let mut header = Vec::new();
        if kind.namespaced() {
            header.push("NAMESPACE");
        }
        header.push("NAME");
        header.extend(columns.iter().map(|(name, _)| *name));
        let rows: Vec<Vec<String>> = of_kind
            .iter()
            .map(|object| {
                let mut row = Vec::new();
                if kind.namespaced() {
                    row.push(at(object, &["metadata", "namespace"]));
                }
                row.push(at(object, &["metadata", "name"]));
                row.extend(columns.iter().map(|(_, read)| read(object)));
                row
            })
            .collect();
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&table(&header, &rows));
    }
    out
}

/// Replaces the value of every `password` field that holds a literal secret (a string) with
/// `<redacted>`; references to Secrets (`secretKeyRef`) are not secret and stay.
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                if key.to_ascii_lowercase().contains("password") && field.is_string() {
                    *field = Value::String(REDACTED.to_string());
                } else {
                    redact(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

pub fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        // Every document is read and checked before the first write: a bad file writes nothing.
        let documents = read_documents(&args.filename)?;
        let mut prepared = Vec::new();
        for document in documents {
            let target = target_of(&document, &args.scope)?;
            prepared.push((target, document));
        }
        for (target, document) in &prepared {
            with_kind!(target.kind, K => check_standalone::<K>(target, document))?;
        }
        let datastore = args.etcd.connect().await?;
        let total = prepared.len();
        for (n, (target, document)) in prepared.into_iter().enumerate() {
            let outcome =
                with_kind!(target.kind, K => apply_one::<K>(&datastore, &target, document).await)
                    .map_err(|e| {
                    if n > 0 {
                        e.context(format!(
                            "{n} of {total} objects were applied before this one"
                        ))
                    } else {
                        e
                    }
                })?;
            println!("{target} {outcome}");
        }
        Ok(())
    })
}

pub fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let targets = match (&args.filename, &args.kind, &args.name) {
            (Some(path), _, _) => read_documents(path)?
                .iter()
                .map(|document| target_of(document, &args.scope))
                .collect::<anyhow::Result<Vec<_>>>()?,
            (None, Some(kind), Some(name)) => {
                let kind = parse_kind(kind)?;
                vec![Target {
                    kind,
                    namespace: args.scope.namespace_for(kind),
                    name: name.clone(),
                }]
            }
            (None, _, _) => {
                return Err(Classified::error(
                    Failure::Usage,
                    "give KIND NAME or -f FILE (e.g. reefctl delete bgppeer rack1-tor)",
                ));
            }
        };
        let datastore = args.etcd.connect().await?;
        for target in targets {
            let deleted = with_kind!(target.kind, K => {
                datastore
                    .store::<K>()
                    .delete(target.namespace.as_deref(), &target.name, None)
                    .await
            });
            match deleted {
                Ok(()) => println!("{target} deleted"),
                Err(reef_datastore::Error::NotFound) if args.ignore_not_found => {
                    println!("{target} not found (ignored)")
                }
                Err(reef_datastore::Error::NotFound) => return Err(not_found(&target)),
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!("deleting {target}")));
                }
            }
        }
        Ok(())
    })
}

impl NamespaceArgs {
    /// The namespace of an object of `kind` named on the command line.
    fn namespace_for(&self, kind: Kind) -> Option<String> {
        kind.namespaced().then(|| {
            self.namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
        })
    }
}

fn parse_kind(text: &str) -> anyhow::Result<Kind> {
    Kind::parse(text).ok_or_else(|| {
        Classified::error(
            Failure::Usage,
            format!(
                "unknown resource kind {text:?}: use one of {}",
                Kind::all_names()
            ),
        )
    })
}

fn not_found(target: &Target) -> anyhow::Error {
    Classified::error(
        Failure::NotFound,
        format!(
            "{target} not found (list them: reefctl get {})",
            target.kind.plural()
        ),
    )
}

/// The YAML documents of a file (or standard input for `-`), with `kind: List` expanded.
fn read_documents(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(path).map_err(|e| {
            let failure = if e.kind() == std::io::ErrorKind::NotFound {
                Failure::NotFound
            } else {
                Failure::Error
            };
            Classified::error(failure, format!("cannot read {}: {e}", path.display()))
        })?
    };
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text).map_err(|e| {
        Classified::error(
            Failure::Invalid,
            format!("{} is not valid YAML: {e}", path.display()),
        )
    })?;
    let mut out = Vec::new();
    for document in documents.into_iter().filter(|d| !d.is_null()) {
        match document {
            Value::Object(ref map) if map.get("kind") == Some(&json!("List")) => {
                let items = map.get("items").and_then(Value::as_array).cloned();
                out.extend(items.unwrap_or_default());
            }
            document => out.push(document),
        }
    }
    if out.is_empty() {
        return Err(Classified::error(
            Failure::Invalid,
            format!("{} holds no resources", path.display()),
        ));
    }
    Ok(out)
}

/// Kind, namespace and name of a document, checked.
fn target_of(document: &Value, scope: &NamespaceArgs) -> anyhow::Result<Target> {
    let invalid = |message: String| Classified::error(Failure::Invalid, message);
    let kind_text = document.get("kind").and_then(Value::as_str).unwrap_or("");
    let name = document
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let what = if name.is_empty() {
        format!("a {kind_text:?} document")
    } else {
        format!("{kind_text} {name}")
    };
    let api_version = document.get("apiVersion").and_then(Value::as_str);
    if api_version != Some(API_VERSION) {
        return Err(invalid(format!(
            "{what}: apiVersion is {}, expected {API_VERSION} (a Calico projectcalico.org/v3 object ports by changing its apiVersion)",
            api_version.map_or("missing".to_string(), |v| format!("{v:?}"))
        )));
    }
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.name() == kind_text)
        .ok_or_else(|| invalid(format!("{what}: kind must be one of {}", Kind::all_names())))?;
    if name.is_empty() {
        return Err(invalid(format!(
            "{what}: metadata.name is missing: give every object a name"
        )));
    }
    let namespace = document
        .pointer("/metadata/namespace")
        .and_then(Value::as_str);
    let namespace = match (kind.namespaced(), namespace) {
        (true, Some(namespace)) => Some(namespace.to_string()),
        (true, None) => scope.namespace_for(kind),
        (false, None) => None,
        (false, Some(namespace)) => {
            return Err(invalid(format!(
                "{what}: metadata.namespace {namespace:?} is set but {kind_text} is cluster-scoped: remove it"
            )));
        }
    };
    Ok(Target {
        kind,
        namespace,
        name: name.to_string(),
    })
}

/// The document as the resource type; the error names the field that does not fit.
fn decode<K: Object>(target: &Target, document: &Value) -> anyhow::Result<K> {
    let object: K = serde_path_to_error::deserialize(document).map_err(|e| {
        Classified::error(
            Failure::Invalid,
            format!(
                "{target}: {}: {} (nothing was written)",
                e.path(),
                e.inner()
            ),
        )
    })?;
    // serde skips fields it does not know: a misspelt field would be lost without a word.
    let written = serde_json::to_value(&object)?;
    let mut unknown = Vec::new();
    unknown_fields("", document, &written, &mut unknown);
    if !unknown.is_empty() {
        return Err(Classified::error(
            Failure::Invalid,
            format!(
                "{target}: unknown field{} {}: check the spelling (field names are Calico's, camelCase) (nothing was written)",
                if unknown.len() == 1 { "" } else { "s" },
                unknown.join(", ")
            ),
        ));
    }
    Ok(object)
}

/// Paths of the keys of `read` that `written` lacks, ignoring empty values (`false`, `0`, `""`, `[]`,
/// `{}`, null), which a type may leave out when it writes itself.
fn unknown_fields(path: &str, read: &Value, written: &Value, unknown: &mut Vec<String>) {
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    };
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (read, written) {
        (Value::Object(read), Value::Object(written)) => {
            for (key, value) in read {
                match written.get(key) {
                    Some(w) => unknown_fields(&join(key), value, w, unknown),
                    None if empty(value) => {}
                    None => unknown.push(join(key)),
                }
            }
        }
        (Value::Array(read), Value::Array(written)) => {
            for (n, (r, w)) in read.iter().zip(written).enumerate() {
                unknown_fields(&format!("{path}[{n}]"), r, w, unknown);
            }
        }
        _ => {}
    }
}

fn invalid_object(target: &Target, errors: &reef_crds::ValidationErrors) -> anyhow::Error {
    Classified::error(
        Failure::Invalid,
        format!("{target} is invalid: {errors} (nothing was written)"),
    )
}

/// The checks that need no datastore: the document decodes and validates on its own.
fn check_standalone<K: Object + Validate>(target: &Target, document: &Value) -> anyhow::Result<()> {
    decode::<K>(target, document)?
        .validate()
        .map_err(|errors| invalid_object(target, &errors))
}

async fn get_one(datastore: &Datastore, target: &Target) -> anyhow::Result<Value> {
    let object = with_kind!(target.kind, K => {
        let object = datastore
            .store::<K>()
            .get(target.namespace.as_deref(), &target.name)
            .await
            .with_context(|| format!("reading {target}"))?;
        object.map(|o| serde_json::to_value(&o)).transpose()?
    });
    object.ok_or_else(|| not_found(target))
}

async fn list(
    datastore: &Datastore,
    kind: Kind,
    namespace: Option<&str>,
) -> anyhow::Result<Vec<Value>> {
    with_kind!(kind, K => {
        let (objects, _) = datastore
            .store::<K>()
            .list(namespace)
            .await
            .with_context(|| format!("listing {}", kind.plural()))?;
        objects
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::from)
    })
}

/// Create, or compare-and-swap update: with the document's `resourceVersion` when it carries one (so an
/// object changed since it was read is a conflict), else with the stored one. The stored status and
/// server-set metadata are kept when the document has none. Returns what happened.
async fn apply_one<K: Object + Validate>(
    datastore: &Datastore,
    target: &Target,
    mut document: Value,
) -> anyhow::Result<&'static str> {
    let store = datastore.store::<K>();
    let namespace = target.namespace.as_deref();
    if let (Some(namespace), Some(metadata)) = (namespace, document.get_mut("metadata")) {
        metadata["namespace"] = json!(namespace);
    }
    let expected = document
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(Revision::new);
    let existing = store
        .get(namespace, &target.name)
        .await
        .with_context(|| format!("reading {target}"))?;
    let Some(existing) = existing else {
        if expected.is_some() {
            return Err(Classified::error(
                Failure::Conflict,
                format!(
                    "{target} was deleted since it was read (its file carries a resourceVersion): remove metadata.resourceVersion to create it again"
                ),
            ));
        }
        let object = decode::<K>(target, &document)?;
        object
            .validate()
            .map_err(|errors| invalid_object(target, &errors))?;
        store.create(&object).await.map_err(|e| match e {
            reef_datastore::Error::AlreadyExists => Classified::error(
                Failure::Conflict,
                format!("{target} was created by someone else meanwhile: apply again"),
            ),
            e => anyhow::Error::new(e).context(format!("creating {target}")),
        })?;
        return Ok("created");
    };
    let current = Revision::of(&existing);
    let stored = serde_json::to_value(&existing)?;
    if document.get("status").is_none()
        && let Some(status) = stored.get("status")
    {
        document["status"] = status.clone();
    }
    // Fields the datastore sets stay as they are.
    for field in SERVER_SET_METADATA {
        if document["metadata"].get(field).is_none()
            && let Some(value) = stored["metadata"].get(field)
        {
            document["metadata"][field] = value.clone();
        }
    }
    let revision = expected.clone().or(current.clone());
    document["metadata"]["resourceVersion"] = json!(revision.as_ref().map(Revision::as_str));
    let object = decode::<K>(target, &document)?;
    K::validate_update(&existing, &object).map_err(|errors| invalid_object(target, &errors))?;
    if expected.is_some() && expected != current {
        return Err(stale(target, expected.as_ref(), current.as_ref()));
    }
    if serde_json::to_value(&object)? == stored {
        return Ok("unchanged");
    }
    match store.update(&object).await {
        Ok(_) => Ok("configured"),
        Err(reef_datastore::Error::Conflict) => Err(stale(target, revision.as_ref(), None)),
        Err(reef_datastore::Error::NotFound) => Err(Classified::error(
            Failure::Conflict,
            format!("{target} was deleted while it was applied: apply again"),
        )),
        Err(e) => Err(anyhow::Error::new(e).context(format!("updating {target}"))),
    }
}

fn stale(
    target: &Target,
    expected: Option<&Revision>,
    current: Option<&Revision>,
) -> anyhow::Error {
    let revisions = match (expected, current) {
        (Some(expected), Some(current)) => {
            format!(" (file has resourceVersion {expected}, stored is {current})")
        }
        _ => String::new(),
    };
    Classified::error(
        Failure::Conflict,
        format!(
            "{target} was changed by someone else since it was read{revisions}: get it again (reefctl get {} {} -o yaml), redo your change and apply, or remove metadata.resourceVersion to overwrite",
            target.kind.name().to_ascii_lowercase(),
            target.name
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_from_its_name_plural_and_lower_case() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(&kind.name()), Some(kind));
            assert_eq!(Kind::parse(&kind.plural()), Some(kind));
            assert_eq!(Kind::parse(&kind.name().to_ascii_lowercase()), Some(kind));
        }
        assert_eq!(Kind::parse("nope"), None);
    }

    #[test]
    fn redact_hides_literal_passwords_and_keeps_secret_references() {
        let mut object = json!({"spec": {
            "password": {"secretKeyRef": {"name": "bgp", "key": "tor"}},
            "peers": [{"password": "hunter2"}], "nodeMeshPassword": "s3cret"}});
        redact(&mut object);
        assert_eq!(object["spec"]["password"]["secretKeyRef"]["name"], "bgp");
        assert_eq!(object["spec"]["peers"][0]["password"], REDACTED);
        assert_eq!(object["spec"]["nodeMeshPassword"], REDACTED);
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let read = json!({"spec": {"cidr": "10.0.0.0/24", "blockSise": 26, "natOutgoing": false,
            "rules": [{"action": "Allow", "actoin": "Deny"}]}});
        let written = json!({"spec": {"cidr": "10.0.0.0/24", "rules": [{"action": "Allow"}]}});
        let mut unknown = Vec::new();
        unknown_fields("", &read, &written, &mut unknown);
        assert_eq!(unknown, ["spec.blockSise", "spec.rules[0].actoin"]);
    }
}

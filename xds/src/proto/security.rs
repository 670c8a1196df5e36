//! `istio.security`: the translated policies. ztunnel's copy names the
//! levels `rules` (5) → `clauses` (1) → `matches` (2); istiod's copy calls
//! the same wire fields `groups` → `rules` → `matches`.

/// The type URL of `Authorization` resources, the second type ztunnel subscribes to.
pub const TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// One translated policy; its resource name is `<namespace>/<name>`, which must
/// agree with the fields below.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Authorization {
    /// The name of the policy it was translated from.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The namespace of the policy it was translated from.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// GLOBAL = 0, NAMESPACE = 1, WORKLOAD_SELECTOR = 2.
    #[prost(int32, tag = "3")]
    pub scope: i32,
    /// ALLOW = 0, DENY = 1.
    #[prost(int32, tag = "4")]
    pub action: i32,
    /// Alternatives: the policy applies when any rule matches; with none it matches nothing.
    #[prost(message, repeated, tag = "5")]
    pub rules: Vec<Rule>,
    /// When true the policy is evaluated and logged but never enforced.
    #[prost(bool, tag = "6")]
    pub dry_run: bool,
}

/// Clauses that must all match for the rule to match; with none it always matches.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Rule {
    /// The clauses, all required (tag 1; istiod calls the field `rules`).
    #[prost(message, repeated, tag = "1")]
    pub clauses: Vec<Clause>,
}

/// Alternatives of which one must match; a clause with no matches always matches.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Clause {
    /// The alternatives (tag 2).
    #[prost(message, repeated, tag = "2")]
    pub matches: Vec<Match>,
}

/// Conditions on one connection: every non-empty list must hold. A positive
/// list needs one entry to match; a `not_` list must have none that matches.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Match {
    /// The source's namespace, taken from its identity.
    #[prost(message, repeated, tag = "1")]
    pub namespaces: Vec<StringMatch>,
    /// Source namespaces that make the match fail.
    #[prost(message, repeated, tag = "2")]
    pub not_namespaces: Vec<StringMatch>,
    /// The source's principal (its SPIFFE ID without `spiffe://`).
    #[prost(message, repeated, tag = "3")]
    pub principals: Vec<StringMatch>,
    /// Source principals that make the match fail.
    #[prost(message, repeated, tag = "4")]
    pub not_principals: Vec<StringMatch>,
    /// Ranges the source IP must fall in.
    #[prost(message, repeated, tag = "5")]
    pub source_ips: Vec<Address>,
    /// Source IP ranges that make the match fail.
    #[prost(message, repeated, tag = "6")]
    pub not_source_ips: Vec<Address>,
    /// Ranges the destination IP must fall in.
    #[prost(message, repeated, tag = "7")]
    pub destination_ips: Vec<Address>,
    /// Destination IP ranges that make the match fail.
    #[prost(message, repeated, tag = "8")]
    pub not_destination_ips: Vec<Address>,
    /// Ports the connection's destination port must be among.
    #[prost(uint32, repeated, tag = "9")]
    pub destination_ports: Vec<u32>,
    /// Destination ports that make the match fail.
    #[prost(uint32, repeated, tag = "10")]
    pub not_destination_ports: Vec<u32>,
    /// The source's service account, by namespace and name.
    #[prost(message, repeated, tag = "11")]
    pub service_accounts: Vec<ServiceAccountMatch>,
    /// Source service accounts that make the match fail.
    #[prost(message, repeated, tag = "12")]
    pub not_service_accounts: Vec<ServiceAccountMatch>,
}

/// An IP range: a raw address and a prefix length.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Address {
    /// 4 or 16 bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub address: Vec<u8>,
    /// Prefix length; 0 means /0, so a host is sent as 32 or 128.
    #[prost(uint32, tag = "2")]
    pub length: u32,
}

/// A service account identified by its namespace and name, both compared exactly.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServiceAccountMatch {
    /// The namespace the service account lives in.
    #[prost(string, tag = "1")]
    pub namespace: String,
    /// The service account's name within that namespace.
    #[prost(string, tag = "2")]
    pub service_account: String,
}

/// A condition on a string (a namespace or a principal).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringMatch {
    /// The comparison to make; a match without one is refused on receipt.
    #[prost(oneof = "MatchType", tags = "1, 2, 3, 4")]
    pub match_type: Option<MatchType>,
}

/// How a `StringMatch` compares its string.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MatchType {
    /// The string equals this value.
    #[prost(string, tag = "1")]
    Exact(String),
    /// The string starts with this value.
    #[prost(string, tag = "2")]
    Prefix(String),
    /// The string ends with this value.
    #[prost(string, tag = "3")]
    Suffix(String),
    /// `google.protobuf.Empty`.
    #[prost(message, tag = "4")]
    Presence(()),
}

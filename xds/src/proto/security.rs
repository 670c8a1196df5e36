//! `istio.security`: the translated policies. ztunnel's copy names the
//! levels `rules` (5) → `clauses` (1) → `matches` (2); istiod's copy calls
//! the same wire fields `groups` → `rules` → `matches`.

pub const TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

#[derive(Clone, PartialEq, prost::Message)]
pub struct Authorization {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// GLOBAL = 0, NAMESPACE = 1, WORKLOAD_SELECTOR = 2.
    #[prost(int32, tag = "3")]
    pub scope: i32,
    /// ALLOW = 0, DENY = 1.
    #[prost(int32, tag = "4")]
    pub action: i32,
    #[prost(message, repeated, tag = "5")]
    pub rules: Vec<Rule>,
    #[prost(bool, tag = "6")]
    pub dry_run: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Rule {
    #[prost(message, repeated, tag = "1")]
    pub clauses: Vec<Clause>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Clause {
    #[prost(message, repeated, tag = "2")]
    pub matches: Vec<Match>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Match {
    #[prost(message, repeated, tag = "1")]
    pub namespaces: Vec<StringMatch>,
    #[prost(message, repeated, tag = "2")]
    pub not_namespaces: Vec<StringMatch>,
    #[prost(message, repeated, tag = "3")]
    pub principals: Vec<StringMatch>,
    #[prost(message, repeated, tag = "4")]
    pub not_principals: Vec<StringMatch>,
    #[prost(message, repeated, tag = "5")]
    pub source_ips: Vec<Address>,
    #[prost(message, repeated, tag = "6")]
    pub not_source_ips: Vec<Address>,
    #[prost(message, repeated, tag = "7")]
    pub destination_ips: Vec<Address>,
    #[prost(message, repeated, tag = "8")]
    pub not_destination_ips: Vec<Address>,
    #[prost(uint32, repeated, tag = "9")]
    pub destination_ports: Vec<u32>,
    #[prost(uint32, repeated, tag = "10")]
    pub not_destination_ports: Vec<u32>,
    #[prost(message, repeated, tag = "11")]
    pub service_accounts: Vec<ServiceAccountMatch>,
    #[prost(message, repeated, tag = "12")]
    pub not_service_accounts: Vec<ServiceAccountMatch>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Address {
    /// 4 or 16 bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub address: Vec<u8>,
    /// Prefix length; 0 means /0, so a host is sent as 32 or 128.
    #[prost(uint32, tag = "2")]
    pub length: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServiceAccountMatch {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(string, tag = "2")]
    pub service_account: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StringMatch {
    #[prost(oneof = "MatchType", tags = "1, 2, 3, 4")]
    pub match_type: Option<MatchType>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MatchType {
    #[prost(string, tag = "1")]
    Exact(String),
    #[prost(string, tag = "2")]
    Prefix(String),
    #[prost(string, tag = "3")]
    Suffix(String),
    /// `google.protobuf.Empty`.
    #[prost(message, tag = "4")]
    Presence(()),
}

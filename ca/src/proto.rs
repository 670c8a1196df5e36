//! The messages of Istio's CA API (`istio.v1.auth`, file `security/v1alpha1/ca.proto`
//! in istio/api), written out by hand with prost so no protoc is needed.
//!
//! ```text
//! service IstioCertificateService {
//!   rpc CreateCertificate(IstioCertificateRequest) returns (IstioCertificateResponse);
//! }
//! ```

/// The gRPC service name.
pub const SERVICE: &str = "istio.v1.auth.IstioCertificateService";
/// The HTTP/2 path of the one method.
pub const CREATE_CERTIFICATE_PATH: &str =
    "/istio.v1.auth.IstioCertificateService/CreateCertificate";
/// The metadata key in which a node proxy names the workload it asks for.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// A workload's request for a certificate: its CSR, a lifetime and optional metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded PKCS#10 request.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested lifetime in seconds; 0 asks for the CA's default.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Optional extra fields, such as `ImpersonatedIdentity`.
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<prost_types::Struct>,
}

/// The CA's answer: the signed certificate and the chain above it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM certificates, leaf first, root last.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

impl IstioCertificateRequest {
    /// The `ImpersonatedIdentity` string from the metadata, if present.
    pub fn impersonated_identity(&self) -> Option<&str> {
        let field = self.metadata.as_ref()?.fields.get(IMPERSONATED_IDENTITY)?;
        match field.kind.as_ref()? {
            prost_types::value::Kind::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// Sets `ImpersonatedIdentity` in the metadata.
    pub fn set_impersonated_identity(&mut self, identity: &str) {
        let value = prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(identity.to_string())),
        };
        self.metadata
            .get_or_insert_with(Default::default)
            .fields
            .insert(IMPERSONATED_IDENTITY.to_string(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn wire_tags_match_istio() {
        let mut req = IstioCertificateRequest {
            csr: "x".into(),
            validity_duration: 86400,
            metadata: None,
        };
        req.set_impersonated_identity("spiffe://cluster.local/ns/a/sa/b");
        let bytes = req.encode_to_vec();
        // field 1, wire type 2 (length-delimited) → 0x0a; field 3 varint → 0x18; field 4 → 0x22
        assert_eq!(bytes[0], 0x0a);
        assert!(bytes.contains(&0x18) && bytes.contains(&0x22));
        let back = IstioCertificateRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            back.impersonated_identity(),
            Some("spiffe://cluster.local/ns/a/sa/b")
        );
    }
}

//! Subject alternative names: the one walk over a certificate's or a CSR's
//! extensions that the CA (reading requests), `ca inspect` and the proxy
//! (reading a peer's identity) all need.

use x509_parser::extensions::{GeneralName, ParsedExtension};

/// Every name of every SubjectAlternativeName extension among `extensions`.
pub fn san_names<'a, 'b>(
    extensions: impl IntoIterator<Item = &'b ParsedExtension<'a>>,
) -> Vec<&'b GeneralName<'a>>
where
    'a: 'b,
{
    extensions
        .into_iter()
        .filter_map(|e| match e {
            ParsedExtension::SubjectAlternativeName(san) => Some(&san.general_names),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The URI names (where a SPIFFE ID lives).
pub fn uri_sans<'a, 'b>(
    extensions: impl IntoIterator<Item = &'b ParsedExtension<'a>>,
) -> Vec<String>
where
    'a: 'b,
{
    san_names(extensions)
        .into_iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

//! The receiving side: HBONE on 15008, where a peer's certificate is
//! checked and every CONNECT is judged by the policies ([`hbone`]), and
//! plaintext on 15006, which PeerAuthentication governs ([`plaintext`]).
//! Both ask [`crate::authorize`] and record each connection in
//! [`crate::observe`].

pub mod hbone;
pub mod plaintext;

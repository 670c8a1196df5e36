//! hbone-proxy: the HBONE node proxy (mTLS + HTTP/2 CONNECT on 15008). Lands with issue 3.

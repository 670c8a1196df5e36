//! hbone-policies: typed Istio and Cilium policies and their evaluation. Lands with issue 4.

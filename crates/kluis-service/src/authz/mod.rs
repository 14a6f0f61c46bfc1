//! Authorization: the decisions of [`kluis_authz`] (re-exported here), and the persisted access
//! registry [`StoreRegistry`], which keeps support grants and role assignments in the store's own
//! database.

mod stored;

pub use kluis_authz::*;
pub use stored::{ACCESS_MAC_DOMAIN, StoreRegistry};

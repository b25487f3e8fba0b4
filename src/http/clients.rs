//! HTTP clients keyed by the settings they are built from, so thousands of sources share a
//! handful of connection pools instead of one each.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Client, ClientBuildError, HttpSettings};

/// Keyed by every setting a client is built from (the TLS files and the connect timeout),
/// so no source inherits another's.
#[derive(Default)]
pub struct HttpClients {
    by_settings: Mutex<HashMap<HttpSettings, Client>>,
}

impl HttpClients {
    pub fn get(&self, settings: &HttpSettings) -> Result<Client, ClientBuildError> {
        let mut cache = self.by_settings.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = cache.get(settings) {
            return Ok(client.clone());
        }
        let client = Client::new(settings)?;
        cache.insert(settings.clone(), client.clone());
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_source_never_inherits_another_sources_connect_timeout() {
        let clients = HttpClients::default();
        let short = HttpSettings {
            timeout: Duration::from_secs(1),
            ca_file: None,
            client_cert: None,
            client_key: None,
        };
        let long = HttpSettings {
            timeout: Duration::from_secs(30),
            ..short.clone()
        };
        for settings in [&short, &short, &long, &long] {
            clients.get(settings).unwrap();
        }
        let cache = clients.by_settings.lock().unwrap();
        assert_eq!(cache.len(), 2, "one client per distinct settings");
    }
}

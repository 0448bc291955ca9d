//! The embedded in-memory broker: one node, no network. Publishing is local delivery.

use super::{Broker, BrokerError};
use crate::hub::{Hub, Publication};
use async_trait::async_trait;
use std::sync::Arc;

pub struct MemoryBroker {
    hub: Arc<Hub>,
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>) -> Self {
        MemoryBroker { hub }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn publish(&self, publication: Publication) -> Result<(), BrokerError> {
        self.hub.deliver(&publication);
        Ok(())
    }

    async fn subscribe(&self, _topic: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn unsubscribe(&self, _topic: &str) -> Result<(), BrokerError> {
        Ok(())
    }
}

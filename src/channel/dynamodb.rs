//! `dynamodb://table` — Amazon DynamoDB or a compatible server. The table is created on first
//! use (on-demand billing, string partition key `k`); an existing table of that shape is used
//! as it is. Items are `{k: key, v: bytes}`; values above the 400 KB item limit are chunked
//! by [`Chunked`]. Reads are strongly consistent.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, DeleteRequest, KeySchemaElement, KeyType,
    KeysAndAttributes, ScalarAttributeType, TableStatus, WriteRequest,
};
use bytes::Bytes;

use super::aws::{classify, sdk_config};
use super::chunked::{Chunked, Item, ItemStore};
use super::meter::{self, Op};
use super::retry::{BackendError, RetryPolicy, with_retries};
use super::{ChannelError, PollPolicy};

/// DynamoDB's item limit is 400 KB including attribute names and the key; values are cut
/// well below it.
const VALUE_LIMIT: usize = 350 * 1024;
/// BatchGetItem takes at most 100 keys, BatchWriteItem 25 requests.
const BATCH_GET: usize = 100;
const BATCH_WRITE: usize = 25;

/// The number attribute holding when an item expires (seconds since the Unix epoch) when
/// the channel was opened with an expiry: enable the table's TTL on it
/// (`aws dynamodb update-time-to-live --table-name T --time-to-live-specification
/// Enabled=true,AttributeName=expires_at`) and DynamoDB deletes expired items itself.
pub const EXPIRES_AT: &str = "expires_at";

/// The raw DynamoDB store (use through [`open`]).
#[derive(Debug)]
pub struct DynamoStore {
    url: String,
    client: Client,
    table: String,
    retry: RetryPolicy,
    expiry: Option<Duration>,
}

/// Write request units of an item of `bytes`: one per started KB.
fn write_units(bytes: usize) -> u64 {
    (bytes + 2).div_ceil(1024).max(1) as u64
}

/// Approximate stored size of an item: attribute names plus values.
fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter()
        .map(|(name, v)| {
            name.len()
                + match v {
                    AttributeValue::S(s) => s.len(),
                    AttributeValue::B(b) => b.as_ref().len(),
                    _ => 8,
                }
        })
        .sum()
}

fn key_of(key: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([("k".to_string(), AttributeValue::S(key.to_string()))])
}

/// Opens table `table`, creating it when it is missing; `url` names it in messages. With an
/// `expiry`, every item carries [`EXPIRES_AT`].
pub async fn open(
    url: &str,
    table: &str,
    retry: RetryPolicy,
    expiry: Option<Duration>,
) -> Result<Chunked<DynamoStore>, ChannelError> {
    let store = DynamoStore {
        url: url.to_string(),
        client: Client::new(&sdk_config().await),
        table: table.to_string(),
        retry,
        expiry,
    };
    store.ensure_table().await?;
    Ok(Chunked::new(store))
}

impl DynamoStore {
    async fn ensure_table(&self) -> Result<(), ChannelError> {
        let t = &self.table;
        with_retries(&self.retry, &self.url, "open table", t, || async {
            let described = self.client.describe_table().table_name(t).send().await;
            let table = match described {
                Ok(d) => d.table,
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_not_found_exception()) =>
                {
                    let created = self
                        .client
                        .create_table()
                        .table_name(t)
                        .attribute_definitions(
                            AttributeDefinition::builder()
                                .attribute_name("k")
                                .attribute_type(ScalarAttributeType::S)
                                .build()
                                .expect("complete"),
                        )
                        .key_schema(
                            KeySchemaElement::builder()
                                .attribute_name("k")
                                .key_type(KeyType::Hash)
                                .build()
                                .expect("complete"),
                        )
                        .billing_mode(BillingMode::PayPerRequest)
                        .send()
                        .await;
                    match created {
                        Ok(c) => c.table_description,
                        // Another worker created it first.
                        Err(e)
                            if e.as_service_error()
                                .is_some_and(|s| s.is_resource_in_use_exception()) =>
                        {
                            None
                        }
                        Err(e) => return Err(classify(e)),
                    }
                }
                Err(e) => return Err(classify(e)),
            };
            let Some(table) = table else {
                return Err(BackendError::transient("table is being created"));
            };
            let schema: Vec<(&str, &KeyType)> = table
                .key_schema()
                .iter()
                .map(|k| (k.attribute_name(), k.key_type()))
                .collect();
            if schema != [("k", &KeyType::Hash)] {
                return Err(BackendError::permanent(format!(
                    "table '{t}' exists with key schema {schema:?}; lambdaml needs a single \
                     string partition key named 'k'"
                )));
            }
            match table.table_status() {
                Some(TableStatus::Active) | None => Ok(()),
                Some(s) => Err(BackendError::transient(format!(
                    "table is {s:?}, waiting for ACTIVE"
                ))),
            }
        })
        .await
    }
}

#[async_trait]
impl ItemStore for DynamoStore {
    fn url(&self) -> &str {
        &self.url
    }

    fn poll_policy(&self) -> PollPolicy {
        PollPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(20),
        }
    }

    fn item_limit(&self) -> usize {
        VALUE_LIMIT
    }

    async fn put_item(&self, key: &str, item: Item) -> Result<(), ChannelError> {
        // The SDK takes one owned buffer, so the tag and the body are joined here.
        let value = item.to_bytes();
        with_retries(&self.retry, &self.url, "put", key, || async {
            meter::record(Op::Put, 1, value.len() as u64);
            meter::record_units(0, write_units(key.len() + value.len()));
            let mut put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("k", AttributeValue::S(key.to_string()))
                .item("v", AttributeValue::B(Blob::new(value.to_vec())));
            if let Some(d) = self.expiry {
                let at = super::expires_at_unix(d).to_string();
                put = put.item(EXPIRES_AT, AttributeValue::N(at));
            }
            put.send().await.map(drop).map_err(classify)
        })
        .await
    }

    async fn get_items(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, ChannelError> {
        let mut found: HashMap<String, Bytes> = HashMap::new();
        let mut unique: Vec<&String> = keys.iter().collect();
        unique.sort();
        unique.dedup();
        for batch in unique.chunks(BATCH_GET) {
            let mut pending = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(batch.iter().map(|k| key_of(k)).collect()))
                    .consistent_read(true)
                    .build()
                    .expect("keys are set"),
            );
            while let Some(request) = pending.take() {
                let out = with_retries(&self.retry, &self.url, "get", batch[0], || async {
                    meter::record(Op::Get, 1, 0);
                    self.client
                        .batch_get_item()
                        .request_items(&self.table, request.clone())
                        .send()
                        .await
                        .map_err(classify)
                })
                .await?;
                // Strongly consistent reads: 4 KB units per item, a missing item costs one.
                let returned = out.responses().and_then(|r| r.get(&self.table));
                let (mut units, mut bytes, mut n_found) = (0, 0, 0);
                for item in returned.into_iter().flatten() {
                    let size = item_size(item);
                    units += size.div_ceil(4096).max(1) as u64;
                    bytes += size as u64;
                    n_found += 1;
                }
                let asked = request.keys().len() as u64;
                let unprocessed = out
                    .unprocessed_keys()
                    .and_then(|u| u.get(&self.table))
                    .map_or(0, |u| u.keys().len() as u64);
                units += asked.saturating_sub(n_found + unprocessed);
                meter::record(Op::Get, 0, bytes);
                meter::record_units(units, 0);
                for item in out
                    .responses()
                    .and_then(|r| r.get(&self.table))
                    .into_iter()
                    .flatten()
                {
                    if let (Some(AttributeValue::S(k)), Some(AttributeValue::B(v))) =
                        (item.get("k"), item.get("v"))
                    {
                        found.insert(k.clone(), Bytes::from(v.clone().into_inner()));
                    }
                }
                // Past 16 MB per response, DynamoDB returns the rest as unprocessed.
                pending = out
                    .unprocessed_keys()
                    .and_then(|u| u.get(&self.table))
                    .filter(|u| !u.keys().is_empty())
                    .cloned();
            }
        }
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    async fn delete_items(&self, keys: &[String]) -> Result<(), ChannelError> {
        let mut unique: Vec<&String> = keys.iter().collect();
        unique.sort();
        unique.dedup();
        for batch in unique.chunks(BATCH_WRITE) {
            let mut requests: Vec<WriteRequest> = batch
                .iter()
                .map(|k| {
                    WriteRequest::builder()
                        .delete_request(
                            DeleteRequest::builder()
                                .set_key(Some(key_of(k)))
                                .build()
                                .expect("key is set"),
                        )
                        .build()
                })
                .collect();
            while !requests.is_empty() {
                let out = with_retries(&self.retry, &self.url, "delete", batch[0], || async {
                    meter::record(Op::Delete, 1, 0);
                    meter::record_units(0, requests.len() as u64);
                    self.client
                        .batch_write_item()
                        .request_items(&self.table, requests.clone())
                        .send()
                        .await
                        .map_err(classify)
                })
                .await?;
                requests = out
                    .unprocessed_items()
                    .and_then(|u| u.get(&self.table))
                    .cloned()
                    .unwrap_or_default();
            }
        }
        Ok(())
    }

    async fn list_items(&self, prefix: &str) -> Result<Option<Vec<String>>, ChannelError> {
        let mut keys = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = with_retries(&self.retry, &self.url, "list", prefix, || async {
                meter::record(Op::List, 1, 0);
                self.client
                    .scan()
                    .table_name(&self.table)
                    .filter_expression("begins_with(k, :p)")
                    .expression_attribute_values(":p", AttributeValue::S(prefix.to_string()))
                    .projection_expression("k")
                    .consistent_read(true)
                    .set_exclusive_start_key(start.clone())
                    .send()
                    .await
                    .map_err(classify)
            })
            .await?;
            keys.extend(page.items().iter().filter_map(|i| match i.get("k") {
                Some(AttributeValue::S(k)) => Some(k.clone()),
                _ => None,
            }));
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        keys.sort();
        Ok(Some(keys))
    }
}

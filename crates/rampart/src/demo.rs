//! `rampart demo`: the gateway on its embedded defaults plus two sample services, wired by the
//! shipped example configuration, so that a newcomer can send a request through every layer.
//!
//! The sample trading backend (orders, positions) and the sample broker (an OpenAlgo-style
//! funds endpoint) keep everything in memory and trust the identity headers the gateway sets;
//! they are samples, not an exchange or a broker, and listen on loopback only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

/// The shipped example configuration, which `rampart demo` runs.
pub const EXAMPLE_CONFIG: &str = include_str!("../../../config/rampart.example.toml");

/// Where the sample broker listens.
pub const SAMPLE_BROKER: &str = "127.0.0.1:9102";

/// Settings `rampart demo` lays over the example: its own database, and outbound calls to the
/// sample broker on loopback allowed (which production refuses).
pub const DEMO_OVERRIDES: [(&str, &str); 3] = [
    ("RAMPART_DATABASE__URL", "sqlite://data/demo.db"),
    ("RAMPART_ACCOUNTS__ALLOW_HTTP", "true"),
    ("RAMPART_ACCOUNTS__ALLOWED_NETWORKS", "127.0.0.1/32"),
];

#[derive(Debug, Default)]
struct Book {
    next_id: u64,
    orders: Vec<Value>,
}

type SharedBook = Arc<Mutex<Book>>;

fn caller(headers: &HeaderMap) -> Option<(i64, String)> {
    let id = headers
        .get("x-rampart-user-id")?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let username = headers
        .get("x-rampart-username")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Some((id, username))
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// A new order, as the sample backend takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    symbol: String,
    side: String,
    quantity: u32,
    #[serde(default)]
    price: Option<f64>,
}

async fn list_orders(State(book): State<SharedBook>, headers: HeaderMap) -> Response {
    let Some((user_id, _)) = caller(&headers) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no caller identity from the gateway",
        );
    };
    let book = book
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let items: Vec<&Value> = book
        .orders
        .iter()
        .filter(|order| order["user_id"] == user_id)
        .collect();
    Json(json!({ "items": items })).into_response()
}

async fn place_order(
    State(book): State<SharedBook>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some((user_id, username)) = caller(&headers) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no caller identity from the gateway",
        );
    };
    let order: NewOrder = match serde_json::from_slice(&body) {
        Ok(order) => order,
        Err(error) => return refuse(StatusCode::BAD_REQUEST, &error.to_string()),
    };
    let symbol_ok = (1..=20).contains(&order.symbol.len())
        && order
            .symbol
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-');
    if !symbol_ok || !matches!(order.side.as_str(), "BUY" | "SELL") || order.quantity == 0 {
        return refuse(
            StatusCode::BAD_REQUEST,
            "symbol is 1-20 of A-Z 0-9 -, side BUY or SELL, quantity at least 1",
        );
    }
    let mut book = book
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    book.next_id += 1;
    let placed = json!({
        "id": book.next_id,
        "user_id": user_id,
        "placed_by": username,
        "symbol": order.symbol,
        "side": order.side,
        "quantity": order.quantity,
        "price": order.price,
        "status": "filled",
        "request_id": headers.get("x-request-id").and_then(|v| v.to_str().ok()),
    });
    book.orders.push(placed.clone());
    (StatusCode::CREATED, Json(placed)).into_response()
}

async fn positions(State(book): State<SharedBook>, headers: HeaderMap) -> Response {
    let Some((user_id, _)) = caller(&headers) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no caller identity from the gateway",
        );
    };
    let book = book
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut net: HashMap<String, i64> = HashMap::new();
    for order in book
        .orders
        .iter()
        .filter(|order| order["user_id"] == user_id)
    {
        let quantity = order["quantity"].as_i64().unwrap_or(0);
        let signed = if order["side"] == "SELL" {
            -quantity
        } else {
            quantity
        };
        *net.entry(order["symbol"].as_str().unwrap_or("?").to_owned())
            .or_default() += signed;
    }
    let mut items: Vec<Value> = net
        .into_iter()
        .map(|(symbol, quantity)| json!({ "symbol": symbol, "quantity": quantity }))
        .collect();
    items.sort_by(|a, b| a["symbol"].as_str().cmp(&b["symbol"].as_str()));
    Json(json!({ "items": items })).into_response()
}

/// The sample trading backend: `GET /orders`, `POST /orders`, `GET /positions`.
pub fn trading_backend() -> Router {
    Router::new()
        .route("/orders", get(list_orders).post(place_order))
        .route("/positions", get(positions))
        .with_state(SharedBook::default())
}

async fn funds(body: axum::body::Bytes) -> Response {
    let key = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|body| body["apikey"].as_str().map(str::len));
    match key {
        Some(length) if length >= 8 => Json(json!({
            "status": "success",
            "data": {
                "availablecash": "100000.00",
                "collateral": "0.00",
                "m2mrealized": "0.00",
                "m2munrealized": "0.00",
                "utiliseddebits": "0.00"
            }
        }))
        .into_response(),
        _ => (
            StatusCode::FORBIDDEN,
            Json(json!({ "status": "error", "message": "Invalid openalgo apikey" })),
        )
            .into_response(),
    }
}

/// The sample broker: OpenAlgo's `POST /api/v1/funds`, answering for any key of 8+ characters.
pub fn sample_broker() -> Router {
    Router::new().route("/api/v1/funds", post(funds))
}

/// Serves `router` on `address` in the background.
///
/// # Errors
/// The address cannot be bound.
pub async fn spawn(address: SocketAddr, router: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "sample service stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_points_the_demo_at_its_sample_backend() {
        assert!(EXAMPLE_CONFIG.contains("url = \"http://127.0.0.1:9101\""));
    }
}

//! A service protected by `VerifyLayer`, and a client calling it through
//! `AuthInterceptor`, both against a real Tessera started in-process on an
//! embedded database in a temp folder.
//!
//! Run: `cargo run -p tessera-examples --bin orders`

use std::{sync::Arc, time::Duration};

use secrecy::SecretString;
use tessera_client::{
    AuthInterceptor, Credentials, SourceConfig, TokenSource, Transport,
    verify::{IntrospectionConfig, IntrospectionVerifier, ScopeRules, VerifiedClaims, VerifyLayer},
};
use tessera_server::{
    Application, ClientId, NewClientCredential, ScopeSet, Settings, SystemClock, open_admin,
};
use tonic::{Request, Response, Status, transport::Endpoint};

mod shop {
    #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    tonic::include_proto!("shop.v1");
}
use shop::{
    GetOrderRequest, Order,
    orders_client::OrdersClient,
    orders_server::{Orders, OrdersServer},
};

/// The protected service: handlers read the verified claims the layer put
/// into the request extensions.
struct OrdersService;

fn caller<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Arc<VerifiedClaims>>()
        .map_or_else(String::new, |c| c.sub.clone())
}

#[tonic::async_trait]
impl Orders for OrdersService {
    async fn get(&self, request: Request<GetOrderRequest>) -> Result<Response<Order>, Status> {
        let seen_caller = caller(&request);
        Ok(Response::new(Order {
            id: request.into_inner().id,
            item: "teapot".into(),
            seen_caller,
        }))
    }

    async fn create(&self, request: Request<Order>) -> Result<Response<Order>, Status> {
        let seen_caller = caller(&request);
        Ok(Response::new(Order {
            seen_caller,
            ..request.into_inner()
        }))
    }
}

async fn add_client(
    settings: &Settings,
    id: &str,
    scopes: &[&str],
    roles: &[&str],
) -> Result<SecretString, Box<dyn std::error::Error>> {
    let admin = open_admin(settings, Arc::new(SystemClock)).await?;
    Ok(admin
        .add_client(
            ClientId::parse(id)?,
            ScopeSet::parse_list(scopes)?,
            Vec::new(),
            ScopeSet::parse_list(roles)?,
            NewClientCredential::Secret,
        )
        .await?
        .expect("a secret client has a secret"))
}

fn client_source(
    endpoint: &Endpoint,
    id: &str,
    secret: SecretString,
) -> Result<TokenSource, Box<dyn std::error::Error>> {
    let credentials = Credentials::ClientCredentials {
        client_id: id.into(),
        client_secret: secret,
    };
    Ok(TokenSource::connect(
        endpoint,
        &Transport::default(),
        credentials,
        SourceConfig::default(),
    )?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. Tessera, as `tessera serve` would run it, on a throwaway folder.
    let data = tempfile::tempdir()?;
    let mut settings = Settings::new(data.path());
    settings.listen_addr = "127.0.0.1:0".parse()?;
    let tessera = Application::build(settings.clone(), Arc::new(SystemClock)).await?;
    let tessera_endpoint = Endpoint::from_shared(format!("http://{}", tessera.local_addr()))?;
    tokio::spawn(tessera.run_until(std::future::pending()));
    let orders_secret =
        add_client(&settings, "orders-service", &["tessera:introspect"], &[]).await?;
    let storefront_secret = add_client(&settings, "storefront", &["orders:read"], &[]).await?;
    let backoffice_secret = add_client(
        &settings,
        "backoffice",
        &["orders:read", "orders:write"],
        &["clerk"],
    )
    .await?;
    println!("tessera listening on {}", tessera_endpoint.uri());

    // 2. The Orders service: every call's token is checked through Introspect,
    //    with the service authenticating as itself.
    let own = client_source(&tessera_endpoint, "orders-service", orders_secret)?;
    let auth = AuthInterceptor::new(&own, &tessera_endpoint, &Transport::default())?;
    let verifier = IntrospectionVerifier::connect(
        &tessera_endpoint,
        &Transport::default(),
        auth,
        // Tokens must be meant for this service; the storefront asks for
        // Tessera's default audience, which this example's services share.
        IntrospectionConfig::new("tessera"),
    )?;
    let rules = ScopeRules::new()
        .require("/shop.v1.Orders/Get", &["orders:read"])
        .require("/shop.v1.Orders/Create", &["orders:write"])
        // Creating also takes the `clerk` role (the RFC 9068 `roles` claim).
        .require_roles("/shop.v1.Orders/Create", &["clerk"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let orders_addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(VerifyLayer::new(Arc::new(verifier), rules))
            .add_service(OrdersServer::new(OrdersService))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    println!("orders service listening on {orders_addr}");

    // 3. The storefront calls Orders with its own token, attached by the interceptor.
    let orders_endpoint = Endpoint::from_shared(format!("http://{orders_addr}"))?;
    let storefront = client_source(&tessera_endpoint, "storefront", storefront_secret)?;
    storefront.ready().await?;
    let auth = AuthInterceptor::new(&storefront, &orders_endpoint, &Transport::default())?;
    let mut orders = OrdersClient::with_interceptor(orders_endpoint.connect().await?, auth);

    let order = orders
        .get(GetOrderRequest { id: "42".into() })
        .await?
        .into_inner();
    println!(
        "Get(42) -> {} for caller {:?}",
        order.item, order.seen_caller
    );
    let denied = orders
        .create(Order {
            id: "43".into(),
            item: "kettle".into(),
            seen_caller: String::new(),
        })
        .await
        .expect_err("storefront lacks orders:write");
    println!("Create(43) -> {:?}: {}", denied.code(), denied.message());

    // 4. The back office has the scope and the `clerk` role: it may create.
    let backoffice = client_source(&tessera_endpoint, "backoffice", backoffice_secret)?;
    backoffice.ready().await?;
    let auth = AuthInterceptor::new(&backoffice, &orders_endpoint, &Transport::default())?;
    let mut orders = OrdersClient::with_interceptor(orders_endpoint.connect().await?, auth);
    let created = orders
        .create(Order {
            id: "43".into(),
            item: "kettle".into(),
            seen_caller: String::new(),
        })
        .await?
        .into_inner();
    println!(
        "Create(43) by a clerk -> {} for caller {:?}",
        created.item, created.seen_caller
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}

//! Bounds that keep one client from taking the service down: connections
//! that never speak or sit idle are closed, one address cannot hold every
//! connection, every service has the same message and time limits, and a
//! caller's deadline is honoured with an answer, not silence.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};
use tonic::Code;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest,
};

use crate::helpers::{Backend, TestDatabase, client_grant, spawn_app_on, spawn_app_with};

/// How long after `started` the server closed `socket` (end of stream), if
/// it did within `within` of `started`.
async fn closed_within(
    socket: &mut TcpStream,
    started: Instant,
    within: Duration,
) -> Option<Duration> {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout_at(started + within, socket.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            // Server frames (SETTINGS, GOAWAY): keep reading.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_makes_a_call_is_closed() {
    let (app, _db) = spawn_app_with(Backend::Sqlite, |s| {
        s.connections.handshake_timeout = Duration::from_millis(500);
    })
    .await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let mut half_spoken = TcpStream::connect(app.addr).await.unwrap();
    half_spoken.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    for socket in [&mut silent, &mut half_spoken] {
        let took = closed_within(socket, started, Duration::from_secs(3))
            .await
            .expect("a silent connection was left open");
        assert!(
            took >= Duration::from_millis(400),
            "closed too early: {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_no_call_in_flight_is_closed_after_the_idle_timeout() {
    let idle = Duration::from_secs(1);
    let (app, _db) = spawn_app_with(Backend::Sqlite, |s| s.connections.idle_timeout = idle).await;
    // A plain HTTP/2 client, so the connection's end is visible.
    let socket = TcpStream::connect(app.addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(socket).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::post(format!("http://{}/grpc.health.v1.Health/Check", app.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    // One gRPC message: not compressed, zero bytes (an empty HealthCheckRequest).
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    let answered = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("an idle connection was kept open")
        .unwrap()
        .ok();
    let closed_after = answered.elapsed();
    assert!(
        closed_after >= idle - Duration::from_millis(100),
        "closed before the idle timeout: {closed_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_connection() {
    let (app, _db) = spawn_app_with(Backend::Sqlite, |s| {
        s.connections.max_connections_per_address = 3;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let mut fourth = TcpStream::connect(app.addr).await.unwrap();
    let took = closed_within(&mut fourth, Instant::now(), Duration::from_secs(2))
        .await
        .expect("a connection over the per-address cap was kept");
    assert!(took < Duration::from_millis(500), "{took:?}");
    // Another address is still served.
    let mut other = app.client_from("127.0.0.5").await;
    other
        .get_jwks(tessera::pb::GetJwksRequest {})
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_has_the_token_service_message_and_time_limits() {
    let (app, _db) = spawn_app_with(Backend::Sqlite, |s| {
        s.request_timeout = Duration::from_secs(1);
    })
    .await;
    let channel = app.endpoint().connect().await.unwrap();
    let mut reflection = ServerReflectionClient::new(channel);

    let list = |host: String| ServerReflectionRequest {
        host,
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    // Control: a normal request is answered.
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([list(String::new())]))
        .await
        .unwrap()
        .into_inner();
    assert!(answers.message().await.unwrap().is_some());
    // Over 64 KiB: not processed, whatever the stream then reports.
    let answer = match reflection
        .server_reflection_info(tokio_stream::iter([list("x".repeat(100 * 1024))]))
        .await
    {
        Err(status) => Err(status),
        Ok(answers) => answers.into_inner().message().await,
    };
    match answer {
        Err(status) => assert!(
            matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
            "{status:?}"
        ),
        Ok(answer) => assert!(
            answer.is_none(),
            "a 100 KiB reflection request was answered"
        ),
    }

    // A stream that never sends its request is ended at the deadline.
    let (_keep_open, requests) = tokio::sync::mpsc::channel::<ServerReflectionRequest>(1);
    let started = Instant::now();
    let ended = match reflection
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
    {
        Err(status) => Err(status),
        Ok(answers) => {
            let mut answers = answers.into_inner();
            tokio::time::timeout(Duration::from_secs(5), answers.message())
                .await
                .expect("a silent reflection stream was held open")
        }
    };
    assert!(ended.is_err() || matches!(ended, Ok(None)), "{ended:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_database_outage_a_caller_gets_unavailable_within_its_deadline() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let app = spawn_app_on(&db, |_| {}).await;
    let secret = app.add_client("billing", &["read"], &[]).await;
    let other = app.add_client("payroll", &["read"], &[]).await;
    app.issue(client_grant("billing", &secret)).await.unwrap();

    db.set_reachable(false).await;

    let unavailable = |id: &'static str, secret: String| {
        let mut client = app.client.clone();
        async move {
            let mut request = tonic::Request::new(client_grant(id, &secret));
            request.set_timeout(Duration::from_millis(800));
            let started = Instant::now();
            let status = client.issue(request).await.unwrap_err();
            let took = started.elapsed();
            assert_eq!(status.code(), Code::Unavailable, "{id}: {status:?}");
            assert!(
                took < Duration::from_millis(800),
                "{id}: answered after {took:?}"
            );
        }
    };
    // A client this replica does not hold is read from the database.
    unavailable("payroll", other).await;
    // One it holds is not trusted once the directory version has gone
    // unconfirmed for 400 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    unavailable("billing", secret).await;

    db.set_reachable(true).await;
}

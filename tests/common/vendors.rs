//! Mock issuers written from the vendor documents (shared/seeds, shared/vendor-apis.md):
//! same paths, headers, bodies and error shapes; they reject what the real service rejects.

use serde_json::json;

use super::{Recorded, Reply, fake_jwt, unix_now};

/// Apinizer management API, `POST /apiops/auth/token` (seed 003).
/// Credentials are the management user's name and password as client_id/client_secret in a
/// form body.
pub fn apinizer(
    user: &'static str,
    password: &'static str,
    with_expires_in: bool,
) -> impl Fn(&Recorded) -> Reply + Send + Sync {
    move |r: &Recorded| {
        if r.method != "POST" || r.path != "/apiops/auth/token" {
            return Reply::json(
                404,
                json!({"error": "not_found", "error_description": "No handler"}),
            );
        }
        if !r
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
        {
            return Reply::json(
                400,
                json!({"error": "invalid_request", "error_description": "Content-Type must be application/x-www-form-urlencoded"}),
            );
        }
        // Seed 003 lists `Accept: application/json` among the request headers, and the
        // credentials go in the form: a client that sends them as Basic auth is wrong.
        if r.header("accept") != Some("application/json") {
            return Reply::json(
                406,
                json!({"error": "not_acceptable", "error_description": "Accept must be application/json"}),
            );
        }
        if r.header("authorization").is_some() {
            return Reply::json(
                400,
                json!({"error": "invalid_request", "error_description": "client credentials go in the form body"}),
            );
        }
        if r.form_value("grant_type").as_deref() != Some("client_credentials") {
            return Reply::json(
                400,
                json!({"error": "unsupported_grant_type", "error_description": "GrantType value must be client_credentials!"}),
            );
        }
        if r.form_value("client_id").as_deref() != Some(user)
            || r.form_value("client_secret").as_deref() != Some(password)
        {
            return Reply::json(
                401,
                json!({"error": "unauthorized_client", "error_description": "Bad credentials"}),
            );
        }
        let token = fake_jwt(json!({"sub": user, "iat": unix_now(), "exp": unix_now() + 1800}));
        if with_expires_in {
            Reply::json(
                200,
                json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600}),
            )
        } else {
            Reply::json(200, json!({"access_token": token}))
        }
    }
}

/// The error body AppViewX returns (shape per shared/vendor-apis.md).
fn avx_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"response": null, "message": message, "appStatusCode": code, "tags": {}, "headers": null}),
    )
}

/// AppViewX `POST /avxapi/acctmgmt-get-service-token?gwsource=external` (seed 002).
/// HTTP Basic over the raw `clientId:secret`, and the mandatory form parameter
/// `grant_type=Client_Credentials`: the document's "Payload Type should be Form" and its
/// sample request's `Content-Type: application/x-www-form-urlencoded` (its header table says
/// JSON, but shows no JSON payload), and the value spelled as the document spells it.
pub fn appviewx(
    client_id: &'static str,
    secret: &'static str,
) -> impl Fn(&Recorded) -> Reply + Send + Sync {
    move |r: &Recorded| {
        if r.method != "POST"
            || r.path != "/avxapi/acctmgmt-get-service-token"
            || r.query.as_deref() != Some("gwsource=external")
        {
            return avx_error(404, "avx-common-404", "Resource not found");
        }
        let form = r
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
        let grant = r.form_value("grant_type");
        if !form || grant.as_deref() != Some("Client_Credentials") {
            return avx_error(500, "avx-common-011", "Error while processing.");
        }
        match r.basic_raw() {
            None => avx_error(
                400,
                "ACCT_SA_001",
                "Invalid Request::[Invalid client Id or secret]",
            ),
            Some((id, _)) if id != client_id => avx_error(
                400,
                "ACCT_SA_003",
                "Service account is invalid/not found::[Service account not found in the database]",
            ),
            Some((_, s)) if s != secret => avx_error(
                400,
                "OAUTH_CLNT_015",
                "Client Password is incorrect::[Invalid Client credential]",
            ),
            Some(_) => {
                let jwt = fake_jwt(
                    json!({"sub": "platform", "aud": "avx", "clientId": client_id, "iss": "avx", "exp": unix_now() + 1200, "grant type": "client_credentials"}),
                );
                Reply::json(
                    200,
                    json!({"response": jwt, "message": null, "appStatusCode": null, "tags": {}, "headers": null}),
                )
            }
        }
    }
}

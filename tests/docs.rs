//! Examples in the docs that other tests run must be the files those tests use.

#[test]
fn the_nginx_example_in_deployment_md_is_deploy_nginx_conf() {
    let root = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(format!("{root}/docs/deployment.md")).unwrap();
    let file = std::fs::read_to_string(format!("{root}/deploy/nginx.conf")).unwrap();
    let start = doc.find("```nginx\n").expect("an nginx block") + "```nginx\n".len();
    let len = doc[start..].find("```").expect("the block's end");
    assert_eq!(
        &doc[start..start + len],
        file,
        "docs/deployment.md's nginx block differs from deploy/nginx.conf"
    );
}

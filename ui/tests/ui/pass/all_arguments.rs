#[loopwatch::instrument_blocking(name = "db.query", warn = "150ms", slow = "2.5s")]
fn query(sql: &str) -> Result<usize, String> {
    Ok(sql.len())
}

#[loopwatch::instrument_blocking(warn = "500us")]
unsafe fn raw(p: *const u8) -> u8 {
    *p
}

fn main() {
    let _ = query("select 1");
    let x = 7u8;
    let _ = unsafe { raw(&x) };
}

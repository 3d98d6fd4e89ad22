//! `marker_client LINE... [--long BYTES]`: sends each LINE to leaktrace's marker socket
//! (`LEAKTRACE_MARKER`), then, with `--long`, one line of BYTES bytes, and prints every answer
//! on stdout as it comes: what a worker that waits for its answers sees.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
};

fn main() {
    let path = std::env::var("LEAKTRACE_MARKER").expect("run under leaktrace (LEAKTRACE_MARKER)");
    let mut lines: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--long" => {
                let bytes: usize = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--long BYTES");
                lines.push("x".repeat(bytes));
            }
            _ => lines.push(arg),
        }
    }
    let socket = UnixStream::connect(&path).expect("connect to the marker socket");
    let mut answers = BufReader::new(socket.try_clone().expect("clone the socket"));
    let mut socket = socket;
    for line in lines {
        socket
            .write_all(format!("{line}\n").as_bytes())
            .expect("send a line");
        let mut answer = String::new();
        answers.read_line(&mut answer).expect("read the answer");
        print!("{answer}");
    }
}

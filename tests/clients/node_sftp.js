// Downloads every file of one load folder with ssh2-sftp-client, as a
// supplier's Node loader would: node node_sftp.js HOST PORT KEY SRC DST
const fs = require("fs");
const path = require("path");
const Client = require("ssh2-sftp-client");

async function main() {
  const [host, port, key, src, dst] = process.argv.slice(2);
  const sftp = new Client();
  await sftp.connect({
    host,
    port: Number(port),
    username: "bi-alpha",
    privateKey: fs.readFileSync(key),
  });
  for (const entry of await sftp.list(src)) {
    await sftp.fastGet(`${src}/${entry.name}`, path.join(dst, entry.name));
  }
  await sftp.end();
}

main().catch((e) => {
  console.error(e.message);
  process.exit(1);
});

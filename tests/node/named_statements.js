// Clients of node-postgres running named prepared statements (pg's `name` option)
// through a pooler: each client checks every answer and prints its count at the end.
// Usage: node named_statements.js <connection string> <clients> <rounds>
"use strict";
const { Client } = require("pg");

async function run(url, n, rounds) {
  const client = new Client({ connectionString: url });
  await client.connect();
  let checked = 0;
  for (let i = 0; i < rounds; i++) {
    const sum = await client.query({
      name: "sum",
      text: "SELECT $1::int + $2::int AS s",
      values: [i, n],
    });
    if (sum.rows[0].s !== i + n) throw new Error(`client ${n}: ${sum.rows[0].s} != ${i + n}`);
    checked++;
    if (i % 10 === 0) {
      await client.query("BEGIN");
      const echo = await client.query({ name: "echo", text: "SELECT $1::text AS t", values: [`c${n}`] });
      if (echo.rows[0].t !== `c${n}`) throw new Error(`client ${n}: ${echo.rows[0].t}`);
      await client.query("COMMIT");
      checked++;
    }
  }
  await client.end();
  return checked;
}

async function main() {
  const [url, clients, rounds] = process.argv.slice(2);
  const counts = await Promise.all(
    Array.from({ length: Number(clients) }, (_, n) => run(url, n, Number(rounds))),
  );
  console.log(`checked=${counts.reduce((a, b) => a + b, 0)}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

// Opens a page in headless Chromium (Debian's, through puppeteer-core),
// saves a full-page screenshot, and runs axe-core's WCAG 2.1 A and AA rules.
// Prints {"violations": [...]} as JSON.
//
//   node page_check.js URL SCREENSHOT.png
const puppeteer = require("puppeteer-core");
const axe = require("axe-core");

(async () => {
  const [url, shot] = process.argv.slice(2);
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--headless=new", "--disable-gpu"],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1200, height: 900 });
    const response = await page.goto(url, { waitUntil: "load" });
    if (!response.ok()) throw new Error(`${url}: HTTP ${response.status()}`);
    await page.screenshot({ path: shot, fullPage: true });
    await page.addScriptTag({ content: axe.source });
    const result = await page.evaluate(async () =>
      axe.run(document, {
        runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] },
      })
    );
    const violations = result.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 5),
    }));
    console.log(JSON.stringify({ violations, passes: result.passes.length }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e.message);
  process.exit(2);
});

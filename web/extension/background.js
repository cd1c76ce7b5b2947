// background.js - the extension's service worker: the toolbar button opens the side panel,
// the keyboard command starts "select area" in the active tab, and the last selection is
// kept in session storage so a panel opened afterwards still gets it.
chrome.runtime.onInstalled.addListener(() => {
  chrome.sidePanel.setPanelBehavior({ openPanelOnActionClick: true }).catch(() => {});
});

async function startSelect() {
  const [tab] = await chrome.tabs.query({ active: true, lastFocusedWindow: true });
  if (tab && tab.id !== undefined) {
    await chrome.tabs.sendMessage(tab.id, { type: 'sessiond.select' }).catch(() => {});
  }
}

chrome.commands.onCommand.addListener((cmd) => {
  if (cmd === 'select-area') startSelect();
});

chrome.runtime.onMessage.addListener((msg, _sender, reply) => {
  if (msg && msg.type === 'sessiond.selection') {
    chrome.storage.session.set({ lastSelection: msg.context }).catch(() => {});
  } else if (msg && msg.type === 'sessiond.start-select') {
    startSelect().then(() => reply({ ok: true }));
    return true;
  }
  return false;
});

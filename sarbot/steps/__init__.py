"""The steps of a request, in order: intake, classify, acknowledge, verify, collect,
package, deliver. Each step imports only the steps before it; ``sarbot.pipeline`` runs them."""

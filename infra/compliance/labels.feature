Feature: Resources are labelled
  In order to find and cost every histoscreen resource
  As the owner of the histoscreen project
  I want the app and managed-by labels on everything that takes labels

  Scenario Outline: Resources carry the <key> label
    Given I have resource that supports labels defined
    Then it must contain labels
    And it must contain <key>
    And its value must be <value>

    Examples:
      | key        | value       |
      | app        | histoscreen |
      | managed-by | terraform   |
